# One statically linked Arca service and nothing else: no shell, no
# libraries, no users but the numeric one it runs as.
FROM scratch
ARG PROGRAM
COPY ${PROGRAM} /service
USER 10001:10001
ENTRYPOINT ["/service"]
