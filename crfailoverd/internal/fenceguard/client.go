package fenceguard

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"
)

// Conn is one connection to a guard.
type Conn struct {
	c  net.Conn
	rd *bufio.Scanner
}

// Dial connects to the guard's socket.
func Dial(ctx context.Context, socket string) (*Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("connect to the fence guard at %s: %w", socket, err)
	}
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 4<<10), 64<<10)
	return &Conn{c: c, rd: sc}, nil
}

// Close closes the connection.
func (c *Conn) Close() error { return c.c.Close() }

// Send sends one renewal and reads the guard's reply (within timeout).
func (c *Conn) Send(r Renewal, timeout time.Duration) (Reply, error) {
	if err := c.c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return Reply{}, fmt.Errorf("renew the fence guard's deadline: %w", err)
	}
	b, err := json.Marshal(r)
	if err != nil {
		return Reply{}, fmt.Errorf("renew the fence guard's deadline: %w", err)
	}
	if _, err := c.c.Write(append(b, '\n')); err != nil {
		return Reply{}, fmt.Errorf("renew the fence guard's deadline: %w", err)
	}
	if !c.rd.Scan() {
		err := c.rd.Err()
		if err == nil {
			err = errors.New("the guard closed the connection")
		}
		return Reply{}, fmt.Errorf("renew the fence guard's deadline: %w", err)
	}
	var rep Reply
	if err := json.Unmarshal(c.rd.Bytes(), &rep); err != nil {
		return Reply{}, fmt.Errorf("renew the fence guard's deadline: reply: %w", err)
	}
	if rep.Err != "" {
		return rep, fmt.Errorf("renew the fence guard's deadline: the guard answered: %s", rep.Err)
	}
	return rep, nil
}

// Ping asks a guard for its state without changing it (no contact, no
// copies). An error means no guard answers on socket.
func Ping(ctx context.Context, socket string) (Reply, error) {
	c, err := Dial(ctx, socket)
	if err != nil {
		return Reply{}, err
	}
	defer c.Close()
	return c.Send(Renewal{DaemonPID: os.Getpid()}, time.Second)
}

// RequestStop asks the guard on socket to exit once nothing is left to
// guard (see Renewal.Stop).
func RequestStop(ctx context.Context, socket string) (Reply, error) {
	c, err := Dial(ctx, socket)
	if err != nil {
		return Reply{}, err
	}
	defer c.Close()
	return c.Send(Renewal{DaemonPID: os.Getpid(), Stop: true}, time.Second)
}

// Renewer sends renewals every RenewEvery while it runs.
type Renewer struct {
	Socket string
	Log    *slog.Logger
	// Next builds the renewal to send; ok false skips this round (the
	// copies are not known yet).
	Next func(ctx context.Context) (r Renewal, ok bool)
	// Start starts a guard when none answers (nil: never), at most every
	// restartEvery.
	Start func(ctx context.Context) error
	Every time.Duration // default RenewEvery
}

const restartEvery = 5 * time.Second

// Run renews until ctx ends.
func (w *Renewer) Run(ctx context.Context) error {
	every := w.Every
	if every <= 0 {
		every = RenewEvery
	}
	t := time.NewTicker(every)
	defer t.Stop()
	var (
		conn      *Conn
		lastStart time.Time
		lastErr   string
		connected bool
	)
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		r, ok := w.Next(ctx)
		if !ok {
			continue
		}
		if conn == nil {
			c, err := Dial(ctx, w.Socket)
			if err != nil {
				if w.Start != nil && time.Since(lastStart) >= restartEvery {
					lastStart = time.Now()
					w.Log.Warn("no fence guard answers: starting one", "socket", w.Socket, "err", err)
					if serr := w.Start(ctx); serr != nil {
						w.Log.Error("cannot start the fence guard: a frozen or killed daemon leaves its copies running", "err", serr)
					}
				}
				w.note(&lastErr, err)
				continue
			}
			conn = c
		}
		rep, err := conn.Send(r, time.Second)
		if err != nil {
			conn.Close()
			conn, connected = nil, false
			w.note(&lastErr, err)
			continue
		}
		lastErr = ""
		if !connected {
			connected = true
			w.Log.Info("fence guard renewing", "guard_pid", rep.GuardPID, "armed", rep.Armed, "copies", rep.Copies, "contact", r.Contact)
		}
	}
}

func (w *Renewer) note(last *string, err error) {
	if err.Error() != *last {
		w.Log.Warn("fence guard renewal failed; retrying", "err", err)
	}
	*last = err.Error()
}
