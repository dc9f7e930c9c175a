package ociserve

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
)

// Realm is the HTTP basic authentication realm of the endpoint.
const Realm = "crfailoverd"

// Username is the user name of the endpoint's credentials.
const Username = "crfailoverd"

const codeUnauthorized = "UNAUTHORIZED"

// Credentials are the HTTP basic credentials that every request to the
// endpoint must carry.
type Credentials struct {
	Username string
	Password string
}

func (c Credentials) valid() bool { return c.Username != "" && c.Password != "" }

// authorize reports whether r carries the server's credentials; if not, it
// answers 401 with a WWW-Authenticate challenge (which makes containerd
// and CRI-O clients send the credentials they hold for this host) and
// logs the refusal. A server without credentials refuses everything.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request) bool {
	user, pass, offered := r.BasicAuth()
	reason := ""
	switch {
	case !s.Credentials.valid():
		reason = "this endpoint has no credentials configured and serves nobody"
	case !offered:
		reason = "no credentials offered"
	case !equalSecret(user, s.Credentials.Username) || !equalSecret(pass, s.Credentials.Password):
		reason = "wrong user name or password"
	default:
		return true
	}
	s.log.Info("REFUSED checkpoint image request", "remote", r.RemoteAddr, "method", r.Method, "path", r.URL.Path,
		"reason", reason)
	w.Header().Set("WWW-Authenticate", `Basic realm="`+Realm+`"`)
	writeError(w, http.StatusUnauthorized, codeUnauthorized,
		"authentication required: "+r.Method+" "+r.URL.Path+" refused ("+reason+"); this endpoint serves checkpoints, which hold process memory, only with this node's credentials (user "+Username+")",
		map[string]string{"method": r.Method, "path": r.URL.Path, "reason": reason})
	return false
}

// equalSecret compares a and b in time that depends on neither their
// contents nor their lengths (both are hashed first).
func equalSecret(a, b string) bool {
	ha, hb := sha256.Sum256([]byte(a)), sha256.Sum256([]byte(b))
	return subtle.ConstantTimeCompare(ha[:], hb[:]) == 1
}
