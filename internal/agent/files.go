package agent

import (
	"github.com/firesandbox/firesandbox/internal/agentproto"
)

func (c *Config) writeFilesRequest(r *agentproto.WriteFilesRequest) error {
	if err := r.Validate(); err != nil {
		return err
	}
	d, err := c.openDir(r.Dir, true)
	if err != nil {
		return err
	}
	defer d.Close()
	return c.writeFiles(d, r.Files)
}
