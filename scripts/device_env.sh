# Source this at the start of a `device` run (from the repository root, with `.whl` carried):
# installs the carried wheels that the GPU image lacks and puts them and fibmoe on the path.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FIB_CACHE_PATH=/tmp/fib_cache
