package e2b

import "github.com/firesandbox/firesandbox/internal/api/e2b/envdpb/filesystem/filesystemconnect"

// filesystemService is envd's filesystem.Filesystem over the sandbox's
// agent.
type filesystemService struct {
	filesystemconnect.UnimplementedFilesystemHandler
	h *Handler
}
