package nativerestore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/restorecfg"
)

// ExtensionRegistration is the containerd container extension that holds
// the registration a container was restored with (restorecfg's JSON), so
// that a daemon started again still knows the sandbox and container
// configuration of the copies it restored: a label could not hold it
// (containerd bounds a label to 4 KiB).
const ExtensionRegistration = "crfailoverd.io/registration"

// registrationTypeURL is the type of the extension's value.
const registrationTypeURL = "crfailoverd.io/restorecfg.v1+json"

// ErrNoRegistration is wrapped when a container carries no registration
// (not one of crfailoverd's, or made by an older version).
var ErrNoRegistration = errors.New("the container carries no registration")

// ErrBadRegistration is wrapped when a container's registration cannot be
// read (ErrNoRegistration included): no daemon can supervise it.
var ErrBadRegistration = errors.New("unreadable registration")

// registrationExtension encodes reg as the container extension.
func registrationExtension(reg restorecfg.Config) (*anypb.Any, error) {
	b, err := restorecfg.Marshal(reg.Sandbox, reg.Container)
	if err != nil {
		return nil, fmt.Errorf("encode the registration for the container: %w", err)
	}
	return &anypb.Any{TypeUrl: registrationTypeURL, Value: b}, nil
}

// registrationOf decodes the registration from a container's extensions.
func registrationOf(ext map[string]typeurl.Any) (restorecfg.Config, error) {
	a, ok := ext[ExtensionRegistration]
	if !ok || a == nil {
		return restorecfg.Config{}, fmt.Errorf("%w: %w", ErrBadRegistration, ErrNoRegistration)
	}
	if a.GetTypeUrl() != registrationTypeURL {
		return restorecfg.Config{}, fmt.Errorf("%w: extension %s is of type %q, want %q", ErrBadRegistration, ExtensionRegistration, a.GetTypeUrl(), registrationTypeURL)
	}
	reg, err := restorecfg.Parse(a.GetValue())
	if err != nil {
		return restorecfg.Config{}, fmt.Errorf("%w: extension %s: %w", ErrBadRegistration, ExtensionRegistration, err)
	}
	return reg, nil
}

// Info is what does not change about one of crfailoverd's containers.
type Info struct {
	ID           string
	Created      time.Time
	Image        string // the containerd image name it runs
	Registration restorecfg.Config
}

// Inspect returns container id's creation time, image and registration.
// A container that is not there wraps errdefs.ErrNotFound.
func (r *Restorer) Inspect(ctx context.Context, id string) (Info, error) {
	if !idRE.MatchString(id) {
		return Info{}, fmt.Errorf("inspect container %q: not a container ID", id)
	}
	ctx = r.ctx(ctx)
	c, err := r.client.LoadContainer(ctx, id)
	if err != nil {
		return Info{}, fmt.Errorf("inspect container %s: %w", id, err)
	}
	ci, err := c.Info(ctx)
	if err != nil {
		return Info{}, fmt.Errorf("inspect container %s: %w", id, err)
	}
	reg, err := registrationOf(ci.Extensions)
	if err != nil {
		return Info{}, fmt.Errorf("inspect container %s: %w", id, err)
	}
	return Info{ID: id, Created: ci.CreatedAt, Image: ci.Image, Registration: reg}, nil
}

// IsNotFound reports whether err says that a container is not there.
func IsNotFound(err error) bool { return errdefs.IsNotFound(err) }
