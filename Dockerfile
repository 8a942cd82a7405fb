# The mfu command (agent, streams, policies) in one image.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY mfu ./mfu
COPY agents ./agents
COPY streams ./streams
COPY policies ./policies
COPY devenv ./devenv
COPY mfucli ./mfucli
COPY mfuio ./mfuio
RUN pip install --no-cache-dir -c constraints.txt . \
 && useradd --system --uid 10001 mfu
USER 10001
ENTRYPOINT ["mfu"]
CMD ["--help"]
