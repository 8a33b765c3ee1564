package sandbox

import (
	"context"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/state"
)

// WithAgent runs fn with the agent of a sandbox's live VM (resuming the
// sandbox first if it is hibernated), for front ends that speak the
// agent's process and file calls themselves (E2B's envd). Like Exec, a
// hibernation or deletion waits for fn; fn validates its own paths and
// users.
func (s *Sandboxes) WithAgent(ctx context.Context, tenant, id string, fn func(ctx context.Context, sb state.Sandbox, a *agentproto.Client) error) error {
	return s.withVM(ctx, tenant, id, func(ctx context.Context, sb state.Sandbox, vm *VM) error {
		return fn(ctx, sb, vm.Agent)
	})
}

// Agent returns the agent of a sandbox's live VM (resuming the sandbox
// first), for calls that outlive a request's lock: a process's output
// stream, a directory watch. Nothing waits for them: when the VM is
// hibernated or deleted the client closes and they end with
// agentproto.ErrClosed.
func (s *Sandboxes) Agent(ctx context.Context, tenant, id string) (*agentproto.Client, error) {
	var a *agentproto.Client
	err := s.WithAgent(ctx, tenant, id, func(_ context.Context, _ state.Sandbox, c *agentproto.Client) error {
		a = c
		return nil
	})
	return a, err
}
