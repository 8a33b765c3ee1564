package main

import (
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/api/client"
	"github.com/spf13/cobra"
)

func newSandboxCmd(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "sandbox",
		Short: "Long-lived sandboxes: create, exec, copy files, fork, pause, resume, remove",
		Long: `A sandbox is a VM that lives across commands: files you write stay, and a
paused sandbox comes back where it was (memory included). A fork copies a
running sandbox, memory, processes and files, into new ones.

Every sandbox has a timeout (create --timeout, default 5m; sandbox
timeout ID D moves it): at its end it is removed, or paused with
--on-timeout pause. A paused sandbox does not time out; resuming it
starts a new timeout.

These commands talk to the serve of this data directory when one is
running (over its unix socket, <run-dir>/api.sock). Without one, each
command runs the service itself for its duration and hibernates the
sandbox when it ends, so the next command resumes it. Either way the
sandboxes are the same ones, in <data-dir>/state.db.`,
		Example: `  id=$(firesandbox sandbox create python)
  firesandbox sandbox exec $id -- python3 -c 'open("notes.txt","w").write("hi")'
  firesandbox sandbox cp $id:notes.txt ./notes.txt
  firesandbox sandbox cp ./data.csv $id:data.csv
  firesandbox sandbox ls
  firesandbox sandbox fork $id -n 3
  firesandbox sandbox pause $id
  firesandbox sandbox timeout $id 1h
  firesandbox sandbox rm $id`,
	}
	pause := newSandboxStateCmd(g, "pause", "Save a sandbox's memory and disk and stop its VM")
	pause.Aliases = []string{"hibernate"}
	cmd.AddCommand(newSandboxCreateCmd(g), newSandboxLsCmd(g), newSandboxExecCmd(g), newSandboxCpCmd(g),
		newSandboxForkCmd(g), pause,
		newSandboxStateCmd(g, "resume", "Bring a paused sandbox back"),
		newSandboxTimeoutCmd(g), newSandboxRmCmd(g))
	return cmd
}

// withAPI runs fn with a client of this data directory's API and closes
// it afterwards, reporting a close error only if fn succeeded.
func withAPI(cmd *cobra.Command, g *globalFlags, fn func(c *client.Client) error) (err error) {
	conn, err := g.connectAPI(cmd.Context())
	if err != nil {
		return err
	}
	defer func() {
		if cerr := conn.close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	return fn(conn.Client)
}

func newSandboxCreateCmd(g *globalFlags) *cobra.Command {
	var diskMiB int
	var env, meta []string
	var timeout, idle time.Duration
	var onTimeout string
	cmd := &cobra.Command{
		Use:   "create LANGUAGE",
		Short: "Create a sandbox and print its id",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			in := client.CreateIn{Language: args[0], VCPUs: g.vcpus, MemoryMiB: g.memoryMiB, DiskMiB: diskMiB,
				LifetimeS: int64(timeout / time.Second), IdleTimeoutS: int64(idle / time.Second), OnTimeout: onTimeout}
			if timeout < 0 || idle < 0 || (timeout > 0 && timeout < time.Second) {
				return usagef("--timeout and --idle-timeout take a duration of a second or more")
			}
			var err error
			if in.Env, err = keyValues("--env", env); err != nil {
				return err
			}
			if in.Metadata, err = keyValues("--meta", meta); err != nil {
				return err
			}
			return withAPI(cmd, g, func(c *client.Client) error {
				sb, err := c.CreateSandbox(cmd.Context(), in)
				if err != nil {
					return err
				}
				fmt.Println(sb.ID)
				return nil
			})
		},
	}
	cmd.Flags().IntVar(&diskMiB, "disk", 0, "writable disk in MiB (default: files live in guest memory)")
	cmd.Flags().StringArrayVar(&env, "env", nil, "KEY=VALUE for every command in the sandbox (repeatable)")
	cmd.Flags().StringArrayVar(&meta, "meta", nil, "KEY=VALUE label (repeatable)")
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "lifetime: the sandbox ends this long after its create (default: the server's, 5m)")
	cmd.Flags().StringVar(&onTimeout, "on-timeout", "", "at the end of its lifetime: kill (default) or pause")
	cmd.Flags().DurationVar(&idle, "idle-timeout", 0, "pause the sandbox after this long unused (the next command resumes it)")
	return cmd
}

func keyValues(flag string, kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	out := map[string]string{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, usagef("%s %q: want KEY=VALUE", flag, kv)
		}
		out[k] = v
	}
	return out, nil
}

func newSandboxLsCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "ls",
		Short: "List sandboxes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withAPI(cmd, g, func(c *client.Client) error {
				list, err := c.Sandboxes(cmd.Context())
				if err != nil {
					return err
				}
				tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tLANGUAGE\tSTATE\tSHAPE\tCREATED\tLAST USED")
				for _, sb := range list {
					shape := fmt.Sprintf("%d vCPU, %d MiB", sb.VCPUs, sb.MemoryMiB)
					if sb.DiskMiB > 0 {
						shape += fmt.Sprintf(", disk %d MiB", sb.DiskMiB)
					}
					st := sb.State
					if sb.Reason != "" {
						st += " (" + agentproto.TerminalSafe(sb.Reason) + ")"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", sb.ID, sb.Language, st, shape,
						sb.CreatedAt.Local().Format(time.DateTime), sb.LastUsedAt.Local().Format(time.DateTime))
				}
				return tw.Flush()
			})
		},
	}
}

func newSandboxExecCmd(g *globalFlags) *cobra.Command {
	var stdin, cwd string
	var timeout time.Duration
	var env []string
	cmd := &cobra.Command{
		Use:   "exec ID [flags] [--] COMMAND [ARG...]",
		Short: "Run a command in a sandbox; its exit code becomes ours",
		Long: `Run a command in a sandbox (resuming it if hibernated). Output streams as
it comes; stdout and stderr stay separate; the command's exit code is
firesandbox's (128+N for signal N, 124 at its time limit).

A single COMMAND with spaces and no ARGs is a shell line (sh -c).`,
		Example: `  firesandbox sandbox exec sb-1234 -- ls -la
  firesandbox sandbox exec sb-1234 'pip list | head'
  firesandbox sandbox exec sb-1234 --stdin 'hello' -- python3 -c 'print(input())'`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			envs, err := keyValues("--env", env)
			if err != nil {
				return err
			}
			in := client.ExecIn{Cmd: args[1:], Stdin: stdin, Cwd: cwd, Env: envs, TimeoutMS: timeout.Milliseconds()}
			if len(args) == 2 && strings.ContainsAny(args[1], " \t|;&<>$") {
				in.Cmd, in.Command = nil, args[1]
			}
			var res *client.Result
			stdout, flushOut := guestWriter(os.Stdout)
			stderr, flushErr := guestWriter(os.Stderr)
			err = withAPI(cmd, g, func(c *client.Client) error {
				var err error
				res, err = c.Exec(cmd.Context(), args[0], in, stdout, stderr)
				return err
			})
			flushOut()
			flushErr()
			if err != nil {
				return err
			}
			r := &agentproto.ExitResult{Code: res.ExitCode, Signal: res.Signal, Status: agentproto.Status(res.Status), Message: res.Message}
			if r.Status != agentproto.StatusOK && r.Status != agentproto.StatusRuntimeError {
				fmt.Fprintf(os.Stderr, "firesandbox: %s\n", strings.TrimPrefix(describe(r), ": "))
			}
			return exitError{code: exitCode(r)}
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&stdin, "stdin", "", "data for the command's standard input")
	fl.StringVar(&cwd, "cwd", "", "working directory (relative to the sandbox's, /home/sandbox)")
	fl.DurationVar(&timeout, "timeout", 0, "wall-clock limit for the command")
	fl.StringArrayVar(&env, "env", nil, "KEY=VALUE for this command (repeatable)")
	return cmd
}

func newSandboxCpCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "cp SRC DST",
		Short: "Copy a file into or out of a sandbox (ID:PATH names the sandbox side)",
		Long: `Copy one file between this host and a sandbox. The sandbox side is
ID:PATH, with PATH relative to the sandbox's working directory
(/home/sandbox). - as the host side is standard input or output.`,
		Example: `  firesandbox sandbox cp ./data.csv sb-1234:data.csv
  firesandbox sandbox cp sb-1234:out/result.json -`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			srcID, srcPath, srcIn := splitSandboxPath(args[0])
			dstID, dstPath, dstIn := splitSandboxPath(args[1])
			switch {
			case srcIn == dstIn:
				return usagef("cp: exactly one side must be a sandbox path (ID:PATH)")
			case dstIn:
				var data []byte
				var err error
				if args[0] == "-" {
					data, err = io.ReadAll(io.LimitReader(os.Stdin, agentproto.MaxFileTransfer+1))
				} else {
					data, err = os.ReadFile(args[0])
				}
				if err != nil {
					return usageError{err}
				}
				if len(data) > agentproto.MaxFileTransfer {
					return usagef("cp: %s is larger than %d bytes", args[0], agentproto.MaxFileTransfer)
				}
				return withAPI(cmd, g, func(c *client.Client) error {
					return c.Upload(cmd.Context(), dstID, []client.FileIn{{Path: dstPath,
						Content: base64.StdEncoding.EncodeToString(data), Encoding: "base64"}})
				})
			default:
				return withAPI(cmd, g, func(c *client.Client) error {
					data, err := c.Download(cmd.Context(), srcID, srcPath)
					if err != nil {
						return err
					}
					if args[1] == "-" {
						_, err = os.Stdout.Write(data)
						return err
					}
					dst := args[1]
					if fi, err := os.Stat(dst); err == nil && fi.IsDir() {
						dst = filepath.Join(dst, filepath.Base(srcPath))
					}
					return os.WriteFile(dst, data, 0o644)
				})
			}
		},
	}
}

// splitSandboxPath splits "sb-…:path"; ok is false for a host path.
func splitSandboxPath(s string) (id, p string, ok bool) {
	id, p, ok = strings.Cut(s, ":")
	if !ok || !strings.HasPrefix(id, "sb-") || strings.Contains(id, "/") {
		return "", s, false
	}
	return id, p, true
}

func newSandboxStateCmd(g *globalFlags, verb, short string) *cobra.Command {
	return &cobra.Command{
		Use:   verb + " ID",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withAPI(cmd, g, func(c *client.Client) error {
				var sb client.Sandbox
				var err error
				if verb == "pause" {
					sb, err = c.Hibernate(cmd.Context(), args[0])
				} else {
					sb, err = c.Resume(cmd.Context(), args[0])
				}
				if err != nil {
					return err
				}
				fmt.Printf("%s %s\n", sb.ID, sb.State)
				return nil
			})
		},
	}
}

func newSandboxForkCmd(g *globalFlags) *cobra.Command {
	var n int
	cmd := &cobra.Command{
		Use:   "fork ID",
		Short: "Copy a running sandbox into new ones and print their ids",
		Long: `Copy a sandbox, as it runs, into N new sandboxes: each has the parent's
files and memory, so its running processes (a server, an interpreter
holding a value) run on in every child. Each child has its own disk, id,
clock and randomness. The parent is paused only while it is saved.`,
		Example: `  firesandbox sandbox fork sb-1234 -n 4`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if n < 1 {
				return usagef("-n: at least 1")
			}
			return withAPI(cmd, g, func(c *client.Client) error {
				kids, err := c.Fork(cmd.Context(), args[0], n)
				if err != nil {
					return err
				}
				for _, k := range kids {
					fmt.Println(k.ID)
				}
				return nil
			})
		},
	}
	cmd.Flags().IntVarP(&n, "count", "n", 1, "how many children (at most the server's max_forks, default 16)")
	return cmd
}

func newSandboxTimeoutCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:     "timeout ID DURATION",
		Short:   "End a sandbox DURATION from now (killed, or paused with --on-timeout pause)",
		Example: `  firesandbox sandbox timeout sb-1234 2h`,
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := time.ParseDuration(args[1])
			if err != nil || d < time.Second {
				return usagef("timeout %q: want a duration of a second or more, like 90s or 2h", args[1])
			}
			return withAPI(cmd, g, func(c *client.Client) error {
				sb, err := c.SetTimeout(cmd.Context(), args[0], d)
				if err != nil {
					return err
				}
				if sb.ExpiresAt != nil {
					fmt.Printf("%s ends at %s\n", sb.ID, sb.ExpiresAt.Local().Format(time.DateTime))
				}
				return nil
			})
		},
	}
}

func newSandboxRmCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "rm ID...",
		Short: "Delete sandboxes: their VMs, memory and files",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withAPI(cmd, g, func(c *client.Client) error {
				for _, id := range args {
					if err := c.Delete(cmd.Context(), id); err != nil {
						return fmt.Errorf("rm %s: %w", id, err)
					}
				}
				return nil
			})
		},
	}
}
