package vmmproc

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// IDs leases numeric ids, such as the uid each VMM process runs as, from
// [Base, Base+Count), so that no two live VMMs share one, across
// processes: a lease is an exclusive flock on Dir/<id>.lease, held by the
// returned file. Pass that file to the VMM process (it inherits the lock)
// and the lease lasts exactly as long as the VMM, even past this
// process's death. Dir must be private (see PrivateDir).
type IDs struct {
	Dir         string
	Base, Count int
}

// Lease returns the lowest free id and the file holding its lease.
func (p IDs) Lease() (int, *os.File, error) {
	for id := p.Base; id < p.Base+p.Count; id++ {
		f, err := os.OpenFile(filepath.Join(p.Dir, strconv.Itoa(id)+".lease"), os.O_CREATE|os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return 0, nil, fmt.Errorf("lease id: %w", err)
		}
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return id, f, nil
		}
		f.Close()
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return 0, nil, fmt.Errorf("lease id %d: %w", id, err)
		}
	}
	return 0, nil, fmt.Errorf("%w: all %d ids from %d are in use", ErrNoID, p.Count, p.Base)
}
