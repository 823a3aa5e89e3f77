#!/usr/bin/env bash
# Download the cp312 manylinux wheels the GPU machine lacks into .whl/ (git-ignored; carried to `device`).
set -euo pipefail
cd "$(dirname "$0")/.."
for p in flashinfer-bench==0.1.2 apache-tvm-ffi==0.1.15.post2 docstring-parser==0.18.0 pydantic==2.14.3 \
         pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$p"
done
