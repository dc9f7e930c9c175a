// Package secfile checks that files holding secrets (TLS private keys, the
// gossip key) are private to their owner before crfailoverd uses them.
package secfile

import (
	"fmt"
	"os"
	"syscall"
)

// CheckPrivate returns nil if path is a regular file that neither its
// group nor others may read, write or execute (mode&0o077 == 0), and
// otherwise an error naming the file, its mode and the fix. Symbolic links
// are followed: what counts is the file the key is read from (kubelet's
// kubelet-client-current.pem, for one, is a link). A file that cannot be
// stat'ed gives that error.
func CheckPrivate(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	mode := st.Mode()
	if !mode.IsRegular() {
		return fmt.Errorf("%s (mode %s) is not a regular file; a key must be a regular file of mode 0600", path, mode)
	}
	if perm := mode.Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%s has mode %04o: its group or others may access this private key; fix: chmod 600 %s", path, perm, path)
	}
	if st, ok := st.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%s is owned by uid %d, not by this daemon's uid %d, who could read or replace this private key; fix: chown %d %s", path, st.Uid, os.Geteuid(), os.Geteuid(), path)
	}
	return nil
}
