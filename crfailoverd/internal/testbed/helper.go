package testbed

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
)

// The bed runs its long-lived helpers (the registry, a kubelet emulator per
// node) as detached copies of the running binary, selected by these
// environment variables.
const (
	envHelper     = "CRF_BED_HELPER"
	envHelperArgs = "CRF_BED_HELPER_ARGS"
)

type registryArgs struct {
	Port  int      `json:"port"`
	Netns []string `json:"netns"` // node network namespaces to serve in too
}

type emulatorArgs struct {
	Node       string `json:"node"`
	Addr       string `json:"addr"`
	Socket     string `json:"socket"`
	KubeletDir string `json:"kubelet_dir"`
	Cert       string `json:"cert"`
	Key        string `json:"key"`
	CA         string `json:"ca"`
}

// HelperMain runs a bed helper and exits when the process was started as
// one; otherwise it returns at once. Call it first in main and TestMain of
// every program that starts a bed.
func HelperMain() {
	role := os.Getenv(envHelper)
	if role == "" {
		return
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("helper", role)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var err error
	switch role {
	case "registry":
		var a registryArgs
		if err = json.Unmarshal([]byte(os.Getenv(envHelperArgs)), &a); err == nil {
			err = serveRegistry(ctx, a, log)
		}
	case "emulator":
		var a emulatorArgs
		if err = json.Unmarshal([]byte(os.Getenv(envHelperArgs)), &a); err == nil {
			err = runEmulator(ctx, a, log)
		}
	default:
		err = fmt.Errorf("unknown helper %q", role)
	}
	if err != nil {
		log.Error("helper failed", "err", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func runEmulator(ctx context.Context, a emulatorArgs, log *slog.Logger) error {
	cri, err := DialCRI(a.Socket)
	if err != nil {
		return err
	}
	defer cri.Close()
	e := &Emulator{Runtime: cri.Runtime, KubeletDir: a.KubeletDir, Log: log.With("node", a.Node)}
	return ServeEmulator(ctx, e, a.Addr, a.Cert, a.Key, a.CA)
}

// spawn starts a detached process (its own session, output to logPath),
// inside the network namespace netns when it is not empty. Every spawned
// process carries the bed's environment marker. A goroutine reaps it.
func (b *Bed) spawn(logPath, netns string, env []string, name string, args ...string) (int, error) {
	if netns != "" {
		args = append([]string{"--net=" + netns, "--", name}, args...)
		name = "nsenter"
	}
	out, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, fmt.Errorf("open log %s: %w", logPath, err)
	}
	defer out.Close()
	cmd := exec.Command(name, args...)
	cmd.Env = append(append(os.Environ(), envMarker+"="+b.cfg.Dir), env...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %s: %w", name, err)
	}
	go func() { _ = cmd.Wait() }()
	return cmd.Process.Pid, nil
}

// spawnHelper starts a copy of this binary as the helper role.
func (b *Bed) spawnHelper(logPath, netns, role string, args any) (int, error) {
	exe, err := os.Executable()
	if err != nil {
		return 0, fmt.Errorf("find own executable: %w", err)
	}
	j, err := json.Marshal(args)
	if err != nil {
		return 0, err
	}
	return b.spawn(logPath, netns, []string{envHelper + "=" + role, envHelperArgs + "=" + string(j)}, exe)
}
