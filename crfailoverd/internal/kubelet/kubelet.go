// Package kubelet is a client of the kubelet's checkpoint API:
//
//	POST https://NODE:10250/checkpoint/{namespace}/{pod}/{container}?timeout=S
//
// authenticated with a client certificate. Kubelet answers
// {"items":["<archive path on the node>"]}.
package kubelet

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/crfailoverd/crfailoverd/crfailoverd/internal/secfile"
)

// Client checkpoints containers through one kubelet.
type Client struct {
	base *url.URL
	http *http.Client
}

// Options configure a client. Key may be empty when Cert holds the key too
// (kubelet-client-current.pem does); Cert empty means no client
// certificate, CA empty the system's trust store. The file holding the key
// must not be accessible to group or others (see secfile.CheckPrivate).
type Options struct {
	URL  string
	Cert string
	Key  string
	CA   string
}

// New builds a client, loading its certificates now so that a bad path or
// a key that does not match shows at start.
func New(o Options) (*Client, error) {
	u, err := url.Parse(o.URL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("kubelet url %q: want https://HOST:PORT", o.URL)
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.Cert != "" {
		key := o.Key
		if key == "" {
			key = o.Cert
		}
		cert, err := tls.LoadX509KeyPair(o.Cert, key)
		if err != nil {
			return nil, fmt.Errorf("load kubelet client certificate %s (key %s): %w", o.Cert, key, err)
		}
		// The file the key is read from (Cert itself when Key is empty)
		// must be private to its owner; a separate certificate need not be.
		if err := secfile.CheckPrivate(key); err != nil {
			return nil, fmt.Errorf("kubelet client key: %w", err)
		}
		// Present the certificate whatever CAs the server names, so that a
		// CA mismatch fails loudly in the handshake instead of as 401.
		tlsCfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
	}
	if o.CA != "" { // else the system's trust store
		caPEM, err := os.ReadFile(o.CA)
		if err != nil {
			return nil, fmt.Errorf("read kubelet CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, fmt.Errorf("kubelet CA %s holds no PEM certificate", o.CA)
		}
		tlsCfg.RootCAs = pool
	}
	tr := &http.Transport{
		TLSClientConfig:     tlsCfg,
		TLSHandshakeTimeout: 5 * time.Second,
		MaxIdleConnsPerHost: 4,
	}
	return &Client{base: u, http: &http.Client{Transport: tr}}, nil
}

// Error is a non-200 answer of the kubelet.
type Error struct {
	Status int
	Body   string
}

func (e *Error) Error() string {
	return fmt.Sprintf("kubelet answered %d %s: %s", e.Status, http.StatusText(e.Status), e.Body)
}

// IsRuntimeFailure reports whether err is the kubelet reporting that the
// runtime failed the checkpoint (500): asking the runtime directly would
// fail the same way.
func IsRuntimeFailure(err error) bool {
	var ke *Error
	return errors.As(err, &ke) && ke.Status == http.StatusInternalServerError
}

// Checkpoint asks the kubelet to checkpoint a container and returns the
// path of the archive on the node.
func (c *Client) Checkpoint(ctx context.Context, namespace, pod, container string, timeout time.Duration) (string, error) {
	u := *c.base
	u.Path = strings.TrimSuffix(u.Path, "/") + "/checkpoint/" + url.PathEscape(namespace) + "/" + url.PathEscape(pod) + "/" + url.PathEscape(container)
	u.RawQuery = url.Values{"timeout": {fmt.Sprint(int(timeout.Seconds()))}}.Encode()
	ctx, cancel := context.WithTimeout(ctx, timeout+5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), nil)
	if err != nil {
		return "", err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return "", fmt.Errorf("kubelet checkpoint %s/%s/%s: %w", namespace, pod, container, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return "", fmt.Errorf("kubelet checkpoint %s/%s/%s: read answer: %w", namespace, pod, container, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("kubelet checkpoint %s/%s/%s: %w", namespace, pod, container, &Error{Status: resp.StatusCode, Body: strings.TrimSpace(string(body))})
	}
	var ans struct {
		Items []string `json:"items"`
	}
	if err := json.Unmarshal(body, &ans); err != nil || len(ans.Items) != 1 || !strings.HasPrefix(ans.Items[0], "/") {
		return "", fmt.Errorf("kubelet checkpoint %s/%s/%s: answer %q is not {\"items\":[\"/path\"]}", namespace, pod, container, body)
	}
	return ans.Items[0], nil
}

// CloseIdleConnections closes the client's idle connections.
func (c *Client) CloseIdleConnections() { c.http.CloseIdleConnections() }
