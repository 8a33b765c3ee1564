package network

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// SweepReport lists what a Sweep removed.
type SweepReport struct {
	Owners     []string `json:"owners,omitempty"` // dead owner tags
	Namespaces []string `json:"namespaces,omitempty"`
	Links      []string `json:"links,omitempty"`
	Tables     []string `json:"tables,omitempty"`
}

// Sweep removes the namespaces (with their taps and rules), uplink links
// and uplink tables of owners that are dead: owners registered in RunDir
// whose lock no process holds any more, such as a serve killed with
// SIGKILL. Live owners, this Host included, are never touched, and nothing
// without this Host's prefix is looked at. Call it at startup.
func (h *Host) Sweep() (SweepReport, error) {
	var rep SweepReport
	entries, err := os.ReadDir(h.ownersDir())
	if err != nil {
		return rep, fmt.Errorf("sweep: %w", err)
	}
	var errs []error
	for _, e := range entries {
		owner := e.Name()
		if owner == h.owner || len(owner) != 4 || strings.Trim(owner, ownerAlphabet) != "" {
			continue
		}
		path := filepath.Join(h.ownersDir(), owner)
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			continue
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close() // alive
			continue
		}
		rep.Owners = append(rep.Owners, owner)
		errs = append(errs, h.sweepOwner(owner, &rep))
		os.Remove(path)
		f.Close()
	}
	return rep, errors.Join(errs...)
}

func (h *Host) sweepOwner(owner string, rep *SweepReport) error {
	var errs []error
	// Links first: deleting a veth end removes its peer in the VM
	// namespace at once, while a namespace is torn down asynchronously.
	linkPrefix := h.cfg.Prefix + owner + "h"
	if links, err := h.nl.LinkList(); err == nil {
		for _, l := range links {
			if strings.HasPrefix(l.Attrs().Name, linkPrefix) {
				if err := h.nl.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
					errs = append(errs, fmt.Errorf("delete link %s: %w", l.Attrs().Name, err))
					continue
				}
				rep.Links = append(rep.Links, l.Attrs().Name)
			}
		}
	}
	nsPrefix := h.cfg.Prefix + "-" + owner + "-"
	if entries, err := os.ReadDir(h.cfg.NetnsDir); err == nil {
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), nsPrefix) {
				if err := deleteNamedNS(h.cfg.NetnsDir, e.Name()); err != nil {
					errs = append(errs, err)
					continue
				}
				rep.Namespaces = append(rep.Namespaces, e.Name())
			}
		}
	}
	table := h.cfg.Prefix + "_" + owner
	if c, err := nftables.New(nftables.WithNetNSFd(int(h.uplink.Fd()))); err == nil {
		if ts, err := c.ListTablesOfFamily(nftables.TableFamilyINet); err == nil {
			for _, t := range ts {
				if t.Name == table {
					c.DelTable(t)
					if err := c.Flush(); err != nil {
						errs = append(errs, fmt.Errorf("delete table %s: %w", table, err))
					} else {
						rep.Tables = append(rep.Tables, table)
					}
				}
			}
		}
	}
	// Free the dead owner's slots now rather than at their next use.
	if entries, err := os.ReadDir(h.slotsDir()); err == nil {
		for _, e := range entries {
			f, err := os.OpenFile(filepath.Join(h.slotsDir(), e.Name()), os.O_RDWR, 0)
			if err != nil {
				continue
			}
			if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
				if b, _ := io.ReadAll(io.LimitReader(f, 64)); strings.TrimSpace(string(b)) == owner {
					f.Truncate(0)
				}
			}
			f.Close()
		}
	}
	return errors.Join(errs...)
}
