# A system of the lower-trust zone running PostgreSQL 15 and its Arca
# agent, which quiesces the database with the `postgresql` hook kind.
ARG BASE
FROM ${BASE}
COPY arca-agent /usr/local/bin/
COPY postgres-system /usr/local/lib/arca/
ENV RUST_LOG=info
ENTRYPOINT ["/usr/local/lib/arca/postgres-system"]
