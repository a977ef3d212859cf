#!/bin/sh
# sd-batch's hello job: runs inside its own VM (the `minimal` guest) as the user `job`.
# Reads the input file HTCondor transferred, says hello, writes a result file, exits 0.
set -eu
name=$(head -n 1 greeting.txt)
echo "hello, $name: this ran in a VM ($(uname -s) $(uname -r), $(nproc) CPU) as $(id -un)"
echo "my arguments: $# of them: $*"
echo "and this line went to stderr" >&2
wc -w < greeting.txt | tr -d ' ' > result.txt
echo "counted the words of greeting.txt into result.txt"
