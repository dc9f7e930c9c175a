package state

import (
	"bytes"
	"fmt"
	"slices"
	"time"
)

// The apply functions of the dispatch table. Each checks everything first
// and changes the state only when the command is accepted.

// MaxNumber bounds epochs and checkpoint sequence numbers: far above any
// real count (a checkpoint a millisecond for 285 years), and far enough
// below 2^64 that Epoch+1 and Seq+1 never wrap.
const MaxNumber = 1 << 53

func (s *State) registerWorkload(c *RegisterWorkload) error {
	if c.ID == "" || c.Node == "" {
		return fmt.Errorf("register workload %q on node %q: id and node are required: %w", c.ID, c.Node, ErrInvalid)
	}
	if c.CopyEpoch > MaxNumber {
		return fmt.Errorf("register workload %q on node %q: copy epoch %d is above %d: %w", c.ID, c.Node, c.CopyEpoch, uint64(MaxNumber), ErrInvalid)
	}
	copyEpoch := max(c.CopyEpoch, 1)
	w := s.Workloads[c.ID]
	switch {
	case w == nil:
		s.Workloads[c.ID] = &Workload{
			ID: c.ID, Owner: c.Node, Epoch: copyEpoch, Status: StatusRunning,
			Reason: "registered by " + c.Node, Since: c.At,
			Interval: c.Interval, Config: bytes.Clone(c.Config),
		}
		return nil
	case w.Status == StatusFailed:
		w.Owner, w.Epoch, w.Status = c.Node, w.Epoch+1, StatusRunning
		w.Reason = "registered by " + c.Node + " after the cluster gave up"
		w.Since, w.Tried, w.LastError = c.At, nil, ""
		w.RestoredFrom, w.RestoredAt = 0, time.Time{}
	case w.Owner != c.Node || copyEpoch < w.Epoch:
		return fmt.Errorf("register workload %q on %s (copy of epoch %d): %w: owner is %s at epoch %d",
			c.ID, c.Node, copyEpoch, ErrStale, w.Owner, w.Epoch)
	case w.AttemptFailed():
		return fmt.Errorf("register workload %q on %s (copy of epoch %d): %w: this restore was recorded as failed (%s)",
			c.ID, c.Node, copyEpoch, ErrStale, w.LastError)
	case w.Status == StatusRestoring:
		w.Status, w.Since, w.Tried, w.LastError = StatusRunning, c.At, nil, ""
		w.RestoredFrom, w.RestoredAt = w.Seq, c.At
	}
	w.Interval, w.Config = c.Interval, bytes.Clone(c.Config)
	return nil
}

func (s *State) commitCheckpoint(c *CommitCheckpoint) error {
	cp := c.Checkpoint
	what := fmt.Sprintf("commit checkpoint #%d of workload %q from %s at epoch %d", cp.Seq, c.ID, c.Node, c.Epoch)
	if c.ID == "" || c.Node == "" || cp.Seq == 0 || cp.SHA256 == "" || cp.Size < 0 {
		return fmt.Errorf("%s: id, node, seq, sha256 and a size >= 0 are required: %w", what, ErrInvalid)
	}
	if cp.Seq > MaxNumber || c.Epoch > MaxNumber {
		return fmt.Errorf("%s: sequence numbers and epochs above %d are refused: %w", what, uint64(MaxNumber), ErrInvalid)
	}
	if err := checkNeeds(cp); err != nil {
		return fmt.Errorf("%s: %w: %w", what, err, ErrInvalid)
	}
	w, err := s.workload(what, c.ID)
	if err != nil {
		return err
	}
	if w.Owner != c.Node || w.Epoch != c.Epoch {
		return fmt.Errorf("%s: %w: owner is %q at epoch %d", what, ErrStale, w.Owner, w.Epoch)
	}
	cp.Holders = []string{c.Node}
	if cp.RecordsNeeds() {
		cp.TakenOn = c.Node // the CPU digest is of the committing node's flags
	}
	kept := make([]Checkpoint, 0, MaxCheckpoints)
	for _, old := range w.Checkpoints {
		switch {
		case old.Seq == cp.Seq && old.SHA256 == cp.SHA256:
			cp.Holders = addSorted(slices.Clone(old.Holders), c.Node)
			cp.Bad = old.Bad
		case old.Seq >= cp.Seq:
			// numbered by an owner whose line the workload left
		default:
			kept = append(kept, old)
		}
	}
	w.Checkpoints = append([]Checkpoint{cp}, kept[:min(len(kept), MaxCheckpoints-1)]...)
	return nil
}

func (s *State) addHolder(c *AddHolder) error {
	what := fmt.Sprintf("add holder %s of checkpoint #%d of workload %q", c.Node, c.Seq, c.ID)
	if c.ID == "" || c.Node == "" || c.Seq == 0 {
		return fmt.Errorf("%s: id, node and seq are required: %w", what, ErrInvalid)
	}
	w, err := s.workload(what, c.ID)
	if err != nil {
		return err
	}
	cp := w.Checkpoint(c.Seq)
	if cp == nil {
		return nil // trimmed away or replaced: nothing to record
	}
	if c.SHA256 != "" && c.SHA256 != cp.SHA256 {
		return fmt.Errorf("%s: %w: the cluster's #%d has sha256 %s, the copy %s", what, ErrStale, c.Seq, cp.SHA256, c.SHA256)
	}
	if c.Size != 0 && c.Size != cp.Size {
		return fmt.Errorf("%s: %w: the cluster's #%d has %d bytes, the copy %d", what, ErrStale, c.Seq, cp.Size, c.Size)
	}
	cp.Holders = addSorted(cp.Holders, c.Node)
	return nil
}

func (s *State) dropHolder(c *DropHolder) error {
	what := fmt.Sprintf("drop holder %s of checkpoint #%d (sha256 %.12s) of workload %q", c.Node, c.Seq, c.SHA256, c.ID)
	if c.ID == "" || c.Node == "" || c.Seq == 0 || c.SHA256 == "" {
		return fmt.Errorf("%s: id, node, seq and sha256 are required: %w", what, ErrInvalid)
	}
	w, err := s.workload(what, c.ID)
	if err != nil {
		return err
	}
	cp := w.Checkpoint(c.Seq)
	if cp == nil || cp.SHA256 != c.SHA256 {
		return nil // trimmed away or replaced: the judged record is gone
	}
	cp.Holders = slices.DeleteFunc(cp.Holders, func(h string) bool { return h == c.Node })
	return nil
}

func (s *State) place(c *Place) error {
	what := fmt.Sprintf("place workload %q on %s at epoch %d from checkpoint #%d", c.ID, c.Owner, c.Epoch, c.Seq)
	if c.ID == "" || c.Owner == "" || c.Seq == 0 {
		return fmt.Errorf("%s: id, owner and seq are required: %w", what, ErrInvalid)
	}
	if c.Epoch > MaxNumber {
		return fmt.Errorf("%s: epochs above %d are refused: %w", what, uint64(MaxNumber), ErrInvalid)
	}
	w, err := s.workload(what, c.ID)
	if err != nil {
		return err
	}
	if c.Epoch != w.Epoch+1 {
		return fmt.Errorf("%s: %w: the workload is at epoch %d (owner %q)", what, ErrStale, w.Epoch, w.Owner)
	}
	if s.Nodes[c.Owner] == nil {
		return fmt.Errorf("%s: %w %q", what, ErrUnknownNode, c.Owner)
	}
	if cp := w.Checkpoint(c.Seq); cp != nil && cp.Bad != "" {
		return fmt.Errorf("%s: refused: the checkpoint is marked bad (%s): %w", what, cp.Bad, ErrInvalid)
	}
	w.Owner, w.Epoch, w.Status, w.Seq = c.Owner, c.Epoch, StatusRestoring, c.Seq
	w.Reason, w.Since = c.Reason, c.At
	return nil
}

func (s *State) restoreDone(c *RestoreDone) error {
	what := fmt.Sprintf("report restore of workload %q on %s at epoch %d from checkpoint #%d (ok=%t)", c.ID, c.Node, c.Epoch, c.Seq, c.OK)
	if c.ID == "" || c.Node == "" {
		return fmt.Errorf("%s: id and node are required: %w", what, ErrInvalid)
	}
	w, err := s.workload(what, c.ID)
	if err != nil {
		return err
	}
	if w.Owner != c.Node || w.Epoch != c.Epoch || w.Seq != c.Seq {
		return fmt.Errorf("%s: %w: owner is %q at epoch %d, restoring #%d", what, ErrStale, w.Owner, w.Epoch, w.Seq)
	}
	switch {
	case c.OK && w.Status == StatusRunning:
		return nil // reported again, or the owner's registration came first
	case w.Status != StatusRestoring:
		return fmt.Errorf("%s: %w: the workload is %s", what, ErrStatus, w.Status)
	case w.AttemptFailed():
		return fmt.Errorf("%s: %w: this attempt was already recorded as failed (%s)", what, ErrStale, w.LastError)
	case c.OK:
		w.Status, w.Since, w.Tried, w.LastError = StatusRunning, c.At, nil, ""
		w.RestoredFrom, w.RestoredAt = w.Seq, c.At
	default:
		msg := c.Error
		if msg == "" {
			msg = "restore failed"
		}
		w.Tried = append(w.Tried, Try{Node: c.Node, Seq: c.Seq, Error: msg})
		w.LastError = msg
	}
	return nil
}

func (s *State) appFailed(c *AppFailed) error {
	what := fmt.Sprintf("report application failure of workload %q on %s at epoch %d", c.ID, c.Node, c.Epoch)
	if c.ID == "" || c.Node == "" {
		return fmt.Errorf("%s: id and node are required: %w", what, ErrInvalid)
	}
	w, err := s.workload(what, c.ID)
	if err != nil {
		return err
	}
	if w.Owner != c.Node || w.Epoch != c.Epoch {
		return fmt.Errorf("%s: %w: owner is %q at epoch %d", what, ErrStale, w.Owner, w.Epoch)
	}
	if w.Status != StatusRunning {
		return fmt.Errorf("%s: %w: the workload is %s, not running", what, ErrStatus, w.Status)
	}
	w.Status, w.Reason, w.Since = StatusAppFailed, c.Reason, c.At
	w.FailKind = c.Kind
	return nil
}

func (s *State) retryWorkload(c *RetryWorkload) error {
	what := fmt.Sprintf("retry workload %q at epoch %d", c.ID, c.Epoch)
	if c.ID == "" {
		return fmt.Errorf("%s: id is required: %w", what, ErrInvalid)
	}
	if c.Epoch > MaxNumber {
		return fmt.Errorf("%s: epochs above %d are refused: %w", what, uint64(MaxNumber), ErrInvalid)
	}
	w, err := s.workload(what, c.ID)
	if err != nil {
		return err
	}
	if c.Epoch != w.Epoch+1 {
		return fmt.Errorf("%s: %w: the workload is at epoch %d (owner %q)", what, ErrStale, w.Epoch, w.Owner)
	}
	if w.Status != StatusFailed {
		return fmt.Errorf("%s: %w: the workload is %s, not failed", what, ErrStatus, w.Status)
	}
	w.Owner, w.Epoch, w.Status, w.Reason, w.Since = "", c.Epoch, StatusRetrying, c.Reason, c.At
	w.Tried, w.LastError = nil, ""
	return nil
}

func (s *State) markCheckpointBad(c *MarkCheckpointBad) error {
	what := fmt.Sprintf("mark checkpoint #%d (sha256 %.12s) of workload %q bad", c.Seq, c.SHA256, c.ID)
	if c.ID == "" || c.Seq == 0 || c.SHA256 == "" || c.Why == "" {
		return fmt.Errorf("%s: id, seq, sha256 and why are required: %w", what, ErrInvalid)
	}
	w, err := s.workload(what, c.ID)
	if err != nil {
		return err
	}
	cp := w.Checkpoint(c.Seq)
	if cp == nil || cp.SHA256 != c.SHA256 || cp.Bad != "" {
		return nil // trimmed away, replaced, or marked already
	}
	cp.Bad = c.Why
	return nil
}

func (s *State) giveUp(c *GiveUp) error {
	what := fmt.Sprintf("give up workload %q at epoch %d", c.ID, c.Epoch)
	if c.ID == "" {
		return fmt.Errorf("%s: id is required: %w", what, ErrInvalid)
	}
	w, err := s.workload(what, c.ID)
	if err != nil {
		return err
	}
	if w.Epoch != c.Epoch {
		return fmt.Errorf("%s: %w: the workload is at epoch %d (owner %q)", what, ErrStale, w.Epoch, w.Owner)
	}
	w.Status, w.Owner, w.LastError, w.Since = StatusFailed, "", c.Reason, c.At
	return nil
}

func (s *State) removeWorkload(c *RemoveWorkload) error {
	if c.ID == "" {
		return fmt.Errorf("remove workload: id is required: %w", ErrInvalid)
	}
	delete(s.Workloads, c.ID)
	return nil
}

func (s *State) upsertNode(c *UpsertNode) error {
	if c.Name == "" {
		return fmt.Errorf("record node (rpc address %q): name is required: %w", c.RPCAddr, ErrInvalid)
	}
	if n := s.Nodes[c.Name]; n != nil {
		n.RPCAddr = c.RPCAddr
		return nil
	}
	s.Nodes[c.Name] = &Node{Name: c.Name, RPCAddr: c.RPCAddr, Joined: c.At}
	return nil
}

func (s *State) removeNode(c *RemoveNode) error {
	if c.Name == "" {
		return fmt.Errorf("remove node: name is required: %w", ErrInvalid)
	}
	delete(s.Nodes, c.Name)
	for _, w := range s.Workloads {
		for i := range w.Checkpoints {
			cp := &w.Checkpoints[i]
			cp.Holders = slices.DeleteFunc(cp.Holders, func(h string) bool { return h == c.Name })
		}
	}
	return nil
}

// workload returns workload id, or an error saying what was being done.
func (s *State) workload(what, id string) (*Workload, error) {
	w := s.Workloads[id]
	if w == nil {
		return nil, fmt.Errorf("%s: %w", what, ErrUnknownWorkload)
	}
	return w, nil
}

// addSorted inserts name into the sorted list if it is not there yet.
func addSorted(list []string, name string) []string {
	i, found := slices.BinarySearch(list, name)
	if found {
		return list
	}
	return slices.Insert(list, i, name)
}
