# eqserve: CPU image by default. For NVIDIA GPUs build with
#   docker build --build-arg BASE=pytorch/pytorch:2.11.0-cuda13.0-cudnn9-runtime --build-arg TORCH=skip .
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG TORCH=2.13.0
WORKDIR /app
COPY pyproject.toml README.md ./
COPY eqserve ./eqserve
RUN if [ "$TORCH" != "skip" ]; then \
      pip install --no-cache-dir "torch==${TORCH}" --extra-index-url https://download.pytorch.org/whl/cpu; \
    fi \
 && pip install --no-cache-dir .
ENV EQSERVE_HOST=0.0.0.0 EQSERVE_PORT=8000
EXPOSE 8000
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz')"
CMD ["eqserve", "serve"]
