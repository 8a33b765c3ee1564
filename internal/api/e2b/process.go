package e2b

import "github.com/firesandbox/firesandbox/internal/api/e2b/envdpb/process/processconnect"

// processService is envd's process.Process over the sandbox's agent.
type processService struct {
	processconnect.UnimplementedProcessHandler
	h *Handler
}
