#!/bin/sh
# static-build.sh - one self-contained binary of the trainer with the CUDA
# backend, for GPU machines where OpenBLAS and json-c are not installed (the
# GPU numbers of docs/training.md were measured with it):
#   OUT/hashattn-train-static train ...   = hashattn-train
#   OUT/hashattn-train-static calib ...   = hashattn-calib
#   OUT/hashattn-train-static test [DIR]  = tests/train/test_cuda.c
# OpenBLAS, json-c, libstdc++ and the CUDA runtime are linked statically;
# cuBLAS is loaded at run time (put its directory on LD_LIBRARY_PATH or set
# HASHATTN_CUBLAS). PLUGIN (a CPU build's libhashattn.so.1) is copied beside it
# for the trainer's plugin check.
#
#   tools/train/static-build.sh OUT_DIR PLUGIN
set -eu
out=${1:?usage: static-build.sh OUT_DIR PLUGIN}
plugin=${2:?usage: static-build.sh OUT_DIR PLUGIN}
src=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$src/../.." && pwd)
nvcc=${NVCC:-/usr/local/cuda/bin/nvcc}
cudalib=${CUDA_LIB:-/usr/local/cuda/lib64}
blas=${OPENBLAS_A:-/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.a}
jsonc=${JSONC_A:-/usr/lib/x86_64-linux-gnu/libjson-c.a}
mkdir -p "$out"
obj=$(mktemp -d)
trap 'rm -rf "$obj"' EXIT
cflags="-O3 -std=c11 -D_GNU_SOURCE -DHASHATTN_TRAIN_CUDA=1 -I$src -I$root -I$root/abi -I$(dirname "$blas")"
"$nvcc" -c -O3 -arch=sm_90 -I"$src" "$src/backend_cuda.cu" -o "$obj/backend_cuda.o"
for f in calib mlp backend_cpu net weights_io train plugin_check progress synth; do
  extra=""
  [ $f = mlp ] && extra=-ffp-contract=off
  [ $f = backend_cpu ] && extra=-ffast-math
  gcc $cflags $extra -c "$src/$f.c" -o "$obj/$f.o"
done
gcc $cflags -Dmain=train_main -DHASHATTN_TRAIN_DEFAULT_PLUGIN='"./libhashattn.so.1"' -c "$src/main.c" -o "$obj/m1.o"
gcc $cflags -Dmain=calib_main -c "$src/calib_tool.c" -o "$obj/m2.o"
gcc $cflags -I"$root/tests/train" -Dmain=test_main -c "$root/tests/train/test_cuda.c" -o "$obj/m3.o"
cat > "$obj/multi.c" <<'EOC'
#include <stdio.h>
#include <string.h>
int train_main(int, char **);
int calib_main(int, char **);
int test_main(int, char **);
int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "train"))
        return train_main(argc - 1, argv + 1);
    if (argc > 1 && !strcmp(argv[1], "calib"))
        return calib_main(argc - 1, argv + 1);
    if (argc > 1 && !strcmp(argv[1], "test"))
        return test_main(argc - 1, argv + 1);
    fprintf(stderr, "usage: %s train|calib|test ...\n", argv[0]);
    return 1;
}
EOC
gcc -O2 -c "$obj/multi.c" -o "$obj/multi.o"
g++ -s -o "$out/hashattn-train-static" "$obj"/*.o "$blas" "$jsonc" "$cudalib/libcudart_static.a" \
  -lpthread -ldl -lrt -lm -static-libstdc++ -static-libgcc
cp "$plugin" "$out/libhashattn.so.1"
echo "static-build: $out/hashattn-train-static: OK"
