#!/bin/sh
# Regenerates the unwinder/symbolizer test data: builds sample.c like the stack tests build
# their workload, a stripped copy, and captures a stack sample at its openat syscall with gdb
# (registers, stack window, maps; see capture.py). Needs gcc, binutils and gdb (with Python).
set -eu
cd "$(dirname "$0")"
gcc -O2 -fomit-frame-pointer -g -o sample sample.c
strip -s -o sample.stripped sample
gdb -q -batch -nx -x capture.py ./sample > /dev/null
# The tests put their own path to the binary in place of the capturing machine's.
sed -i "s#$(pwd)/sample\$#@SAMPLE@#" maps.txt
echo "regenerated: $(cat regs.txt | tr '\n' ' ')"
