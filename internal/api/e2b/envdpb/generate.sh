#!/bin/sh
# Regenerates the Go code of envd's Connect services from spec/: protoc
# (Debian's protobuf-compiler) with protoc-gen-go and protoc-gen-connect-go
# built from the Go module proxy at the versions go.mod requires.
set -eu
cd "$(dirname "$0")"
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
GOBIN=$bin go install google.golang.org/protobuf/cmd/protoc-gen-go
GOBIN=$bin go install connectrpc.com/connect/cmd/protoc-gen-connect-go
mod=github.com/firesandbox/firesandbox/internal/api/e2b/envdpb
PATH=$bin:$PATH protoc -I spec \
	--go_out=. --go_opt=module=$mod \
	--go_opt=Mprocess/process.proto=$mod/process --go_opt=Mfilesystem/filesystem.proto=$mod/filesystem \
	--connect-go_out=. --connect-go_opt=module=$mod \
	--connect-go_opt=Mprocess/process.proto=$mod/process --connect-go_opt=Mfilesystem/filesystem.proto=$mod/filesystem \
	process/process.proto filesystem/filesystem.proto
