#!/usr/bin/env bash
# Download the cp312 manylinux wheels the GPU machine lacks into .whl/ (git-ignored; carried to `device`).
set -euo pipefail
cd "$(dirname "$0")/.."
for p in flashinfer-bench==0.1.2 apache-tvm-ffi==0.1.15.post2 docstring-parser==0.18.0 pydantic==2.14.3 \
         pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 \
         openai==3.57.0 httpx2==2.16.2 httpcore2==2.16.2 h11==0.16.0 truststore==0.10.5 anyio==4.16.0 \
         idna==3.20 sniffio==1.3.1 jiter==0.19.0; do  # the openai client and its own: gpu_agent_demo.sh
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$p"
done
