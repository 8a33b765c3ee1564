// Package envdpb holds the Go code generated from envd's service
// definitions (spec/): the messages of process.Process and
// filesystem.Filesystem and their Connect handlers. Run generate.sh after
// changing spec/.
package envdpb

//go:generate ./generate.sh
