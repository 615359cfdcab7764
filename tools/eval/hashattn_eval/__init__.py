"""hashattn-eval: quality of HashAttention against other sparse-attention methods.

Modules that need only the standard library (``rdata``, ``passkey``, ``stats``) are
importable without torch; ``select`` and ``evaluate`` need torch (and ``evaluate``
transformers and the ``gguf`` package).
"""
