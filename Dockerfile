# syntax=docker/dockerfile:1
# Static binary, non-root, distroless. scripts/test.sh's end-to-end tests build
# the binary with the same command (CGO_ENABLED=0, -trimpath, -ldflags "-s -w").
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/regnorm ./cmd/proxy

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/regnorm /regnorm
ENV REGNORM_DATA_DIR=/var/lib/regnorm
VOLUME /var/lib/regnorm
EXPOSE 5000
USER 65532:65532
ENTRYPOINT ["/regnorm"]
