package gitsync

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strings"
)

// maxWebhookBody bounds a webhook request body (GitHub caps payloads at
// 25 MB; a push payload is a few kB).
const maxWebhookBody = 25 << 20

// WebhookHandler returns the handler for push webhooks (GitHub, Gitea,
// Forgejo, GitLab-compatible senders of X-Hub-Signature-256). A POST whose
// body carries a valid "sha256=<hex HMAC-SHA256 of the body>" signature
// under secret is answered 202 and starts a fetch at once; when the payload
// names the tracked branch's new head ("ref" and "after"), that commit is
// announced, so the syncer keeps fetching until it shows up. Pushes to other
// branches are acknowledged and ignored, and a ping is answered 200.
// Anything unsigned or mis-signed is refused with 401, and every request
// is refused when secret is empty.
func (s *Syncer) WebhookHandler(secret string) http.Handler {
	key := []byte(secret)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxWebhookBody))
		if err != nil {
			http.Error(w, "cannot read body", http.StatusRequestEntityTooLarge)
			return
		}
		if !validSignature(key, body, r.Header.Get("X-Hub-Signature-256")) {
			s.log.Warn("webhook refused: missing or bad signature", "remote", r.RemoteAddr)
			http.Error(w, "missing or bad X-Hub-Signature-256", http.StatusUnauthorized)
			return
		}
		event := r.Header.Get("X-GitHub-Event")
		if event == "" {
			event = r.Header.Get("X-Gitea-Event")
		}
		if event == "ping" {
			w.WriteHeader(http.StatusOK)
			io.WriteString(w, "pong\n") //nolint:errcheck // the client may be gone
			return
		}
		var push struct {
			Ref   string `json:"ref"`
			After string `json:"after"`
		}
		if json.Unmarshal(body, &push) == nil && push.Ref != "" {
			if push.Ref != "refs/heads/"+s.cfg.Branch {
				w.WriteHeader(http.StatusAccepted)
				io.WriteString(w, "ignored: not the tracked branch\n") //nolint:errcheck // the client may be gone
				return
			}
			if push.After != "" && strings.Trim(push.After, "0") != "" {
				s.log.Info("webhook: push", "ref", push.Ref, "after", short(push.After))
				s.Announce(push.After)
				s.Trigger() // a signed push fetches at once, whatever the announce interval
				if c := strings.ToLower(push.After); s.cfg.OnPush != nil && len(c) == 40 && isHex(c) {
					s.cfg.OnPush(c)
				}
				w.WriteHeader(http.StatusAccepted)
				io.WriteString(w, "fetch triggered\n") //nolint:errcheck // the client may be gone
				return
			}
		}
		s.Trigger()
		w.WriteHeader(http.StatusAccepted)
		io.WriteString(w, "fetch triggered\n") //nolint:errcheck // the client may be gone
	})
}

// validSignature checks header == "sha256=" + hex(HMAC-SHA256(key, body))
// in constant time. An empty key accepts nothing.
func validSignature(key, body []byte, header string) bool {
	if len(key) == 0 {
		return false
	}
	hexSig, ok := strings.CutPrefix(header, "sha256=")
	if !ok {
		return false
	}
	got, err := hex.DecodeString(hexSig)
	if err != nil {
		return false
	}
	m := hmac.New(sha256.New, key)
	m.Write(body)
	return hmac.Equal(got, m.Sum(nil))
}

// SignWebhook returns the X-Hub-Signature-256 value for body under secret,
// as a sender computes it.
func SignWebhook(secret string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}
