package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/firesandbox/firesandbox/internal/guestkernel"
	"github.com/spf13/cobra"
)

func newKernelCmd(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "kernel",
		Short: "Prepare and inspect the guest kernel and initramfs",
	}
	var from, deb, agent string
	prepare := &cobra.Command{
		Use:   "prepare (--deb FILE | --from DIR)",
		Short: "Extract vmlinux and modules from a kernel package and build the initramfs",
		Long: `Prepare the guest kernel: extract the ELF vmlinux from a Debian kernel
package (Debian's cloud kernel, linux-image-*-cloud-amd64, boots fastest),
collect the modules the guest agent loads, and build an initramfs with the
agent as /init. The result becomes the current kernel.

Run it again after rebuilding the agent. ` + "`make setup`" + ` downloads the package
and runs this for you.`,
		Example: `  apt-get download linux-image-6.12.95+deb12-cloud-amd64
  firesandbox kernel prepare --deb linux-image-6.12.95+deb12-cloud-amd64_*.deb`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (from == "") == (deb == "") {
				return usagef("give exactly one of --deb FILE or --from DIR")
			}
			if agent == "" {
				agent = defaultAgentPath()
			}
			root := from
			if deb != "" {
				tmp, err := os.MkdirTemp("", "firesandbox-kernel-")
				if err != nil {
					return err
				}
				defer os.RemoveAll(tmp)
				fmt.Fprintf(os.Stderr, "unpacking %s\n", deb)
				if out, err := exec.CommandContext(cmd.Context(), "dpkg-deb", "-x", deb, tmp).CombinedOutput(); err != nil {
					return fmt.Errorf("unpack %s: %v: %s", deb, err, out)
				}
				root = tmp
			}
			_, err := guestkernel.Prepare(guestkernel.PrepareOptions{PackageRoot: root, Agent: agent, DataDir: g.dataDir, Log: os.Stderr})
			return err
		},
	}
	prepare.Flags().StringVar(&deb, "deb", "", "Debian kernel package (.deb)")
	prepare.Flags().StringVar(&from, "from", "", "unpacked kernel package (holds boot/vmlinuz-* and lib/modules/)")
	prepare.Flags().StringVar(&agent, "agent", "", "guest agent binary (default: firesandbox-agent next to this binary, then in PATH)")
	show := &cobra.Command{
		Use:   "show",
		Short: "Show the current guest kernel",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			k, err := guestkernel.Load(g.dataDir)
			if err != nil {
				return err
			}
			b, _ := json.MarshalIndent(struct {
				*guestkernel.Kernel
				Dir string `json:"dir"`
			}{k, k.Dir}, "", "  ")
			fmt.Println(string(b))
			return nil
		},
	}
	cmd.AddCommand(prepare, show)
	return cmd
}

func defaultAgentPath() string {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "firesandbox-agent")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("firesandbox-agent"); err == nil {
		return p
	}
	return "firesandbox-agent"
}
