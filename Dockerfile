# Placeholder: the production image (GPU and CPU targets, non-root, HEALTHCHECK on /ready) comes with the
# hardening issue. It runs the same logic as the README's first command.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY serve ./serve
COPY kernels ./kernels
COPY training ./training
COPY benchmarks ./benchmarks
COPY .ci ./.ci
RUN bash .ci/setup
EXPOSE 8000
CMD [".venv/bin/aligngate", "serve", "--host", "0.0.0.0"]
