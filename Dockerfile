# The project image: Ray's own image (the same Ray and Python on every node) plus this package,
# its recipes and its dependencies. Used by every pod in k8s/ and by the VM launcher.
#
#   docker build -t ghcr.io/your-org/mortgagellm:0.1.0-ray2.60.0-py311 .
#   docker build --build-arg RAY_TAG=2.60.0-py311-gpu --build-arg TORCH_INDEX=https://pypi.org/simple \
#                -t ghcr.io/your-org/mortgagellm:0.1.0-ray2.60.0-py311-gpu .
#   ... add --build-arg EXTRAS=[gpu] for engine vllm (Ray Serve LLM + vLLM; README, engines)
#
# Tag = <package version>-ray<Ray version>-py<Python>[-gpu]: a cluster must run the Ray version its
# clients and rayVersion name. tests/k8s/test_versions.py checks that RAY_TAG, the tags in k8s/ and
# pyproject's Ray pin agree.
ARG RAY_TAG=2.60.0-py311
FROM rayproject/ray:${RAY_TAG}

# The CPU image takes torch from the CPU wheel index (no CUDA wheels); the -gpu image from PyPI.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# Empty, or [gpu]: pyproject's extra with Ray Serve LLM and vLLM (engine vllm), on the -gpu image.
ARG EXTRAS=
ENV DS_BUILD_OPS=0 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

COPY --chown=ray:users pyproject.toml README.md /home/ray/mortgagellm/
COPY --chown=ray:users constraints /home/ray/mortgagellm/constraints
COPY --chown=ray:users mortgagellm /home/ray/mortgagellm/mortgagellm
COPY --chown=ray:users configs /home/ray/mortgagellm/configs
COPY --chown=ray:users data /home/ray/mortgagellm/data
WORKDIR /home/ray/mortgagellm

# Same order as the Makefile: torch first, DeepSpeed built against it without build isolation,
# then the package under the constraints (Ray itself is already the base image's 2.60.0).
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" $(grep -E '^torch==' constraints/cpu.txt) \
 && pip install --no-cache-dir --no-build-isolation -c constraints/cpu.txt deepspeed \
 && pip install --no-cache-dir -c constraints/cpu.txt . \
 && if [ -n "${EXTRAS}" ]; then pip install --no-cache-dir -c constraints/cpu.txt ".${EXTRAS}"; fi \
 && python -c "import ray, mortgagellm; assert ray.__version__ == '2.60.0', ray.__version__"
