# The mfu command (agent, streams, policies) in one image.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY sdk ./sdk
COPY mfu ./mfu
COPY agents ./agents
COPY streams ./streams
COPY policies ./policies
COPY devenv ./devenv
COPY mfucli ./mfucli
COPY mfuio ./mfuio
COPY bench ./bench
COPY mfu_testing ./mfu_testing
COPY examples ./examples
# agent + streams/policies stacks, no matplotlib (the demo report runs elsewhere); the
# mfu-sdk dependency comes from ./sdk
RUN pip install --no-cache-dir -c constraints.txt ./sdk '.[agent,streams]' \
 && useradd --system --uid 10001 mfu
USER 10001
ENTRYPOINT ["mfu"]
CMD ["--help"]
