package gitsync

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"

	"github.com/shoal-run/shoal"
)

func TestBackoffDelay(t *testing.T) {
	base, maxD := 100*time.Millisecond, 2*time.Second
	for _, tc := range []struct {
		attempt int
		want    time.Duration
	}{
		{-1, 100 * time.Millisecond},
		{0, 100 * time.Millisecond},
		{1, 100 * time.Millisecond},
		{2, 200 * time.Millisecond},
		{3, 400 * time.Millisecond},
		{5, 1600 * time.Millisecond},
		{6, 2 * time.Second},
		{1000, 2 * time.Second},
	} {
		if got := backoffDelay(tc.attempt, base, maxD); got != tc.want {
			t.Errorf("backoffDelay(%d) = %v, want %v", tc.attempt, got, tc.want)
		}
	}
	if got := backoffDelay(3, time.Second, 500*time.Millisecond); got != 500*time.Millisecond {
		t.Errorf("cap below base: %v", got)
	}
}

func TestJitter(t *testing.T) {
	for _, tc := range []struct {
		u    float64
		want time.Duration
	}{
		{0, 27 * time.Second},
		{0.5, 30 * time.Second},
		{0.999999, 33 * time.Second},
	} {
		got := jitter(30*time.Second, tc.u)
		if d := got - tc.want; d < -time.Millisecond || d > time.Millisecond {
			t.Errorf("jitter(30s, %v) = %v, want %v", tc.u, got, tc.want)
		}
	}
}

func TestValidSignature(t *testing.T) {
	// GitHub's documented test values for X-Hub-Signature-256
	// (docs.github.com, "Validating webhook deliveries"): what GitHub
	// sends must pass, and what we sign must be what GitHub sends.
	const (
		ghSecret  = "It's a Secret to Everybody"
		ghPayload = "Hello, World!"
		ghHeader  = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
	)
	if got := SignWebhook(ghSecret, []byte(ghPayload)); got != ghHeader {
		t.Errorf("SignWebhook(GitHub's example) = %q, want %q", got, ghHeader)
	}
	if !validSignature([]byte(ghSecret), []byte(ghPayload), ghHeader) {
		t.Errorf("GitHub's example signature refused")
	}
	if validSignature([]byte(ghSecret), []byte(ghPayload+"\n"), ghHeader) {
		t.Errorf("GitHub's example signature accepted for another payload")
	}

	body := []byte(`{"ref":"refs/heads/main"}`)
	good := SignWebhook("secret", body)
	for _, tc := range []struct {
		name   string
		key    string
		header string
		want   bool
	}{
		{"valid", "secret", good, true},
		{"uppercase hex", "secret", "sha256=" + strings.ToUpper(strings.TrimPrefix(good, "sha256=")), true},
		{"empty header", "secret", "", false},
		{"no prefix", "secret", strings.TrimPrefix(good, "sha256="), false},
		{"sha1 prefix", "secret", "sha1=" + strings.TrimPrefix(good, "sha256="), false},
		{"wrong key", "other", good, false},
		{"truncated", "secret", good[:len(good)-2], false},
		{"not hex", "secret", "sha256=" + strings.Repeat("g", 64), false},
		{"empty key", "", SignWebhook("", body), false},
	} {
		if got := validSignature([]byte(tc.key), body, tc.header); got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
}

const testEdKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOQg8eTyBVd0cQJgXIDmSD2Rl1Ot6ChBqw0eMlWtHOoB"

func TestParseAllowedSigners(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		want    []string // principals kept
		wantErr string
	}{
		{"plain", "a@x " + testEdKey + " comment\n", []string{"a@x"}, ""},
		{"comments and blanks", "# c\n\n  a@x " + testEdKey + "\n", []string{"a@x"}, ""},
		{"git namespace", `a@x namespaces="git" ` + testEdKey, []string{"a@x"}, ""},
		{"namespace list", `a@x namespaces="file,git" ` + testEdKey, []string{"a@x"}, ""},
		{"other namespace skipped", `a@x namespaces="file" ` + testEdKey + "\nb@x " + testEdKey, []string{"b@x"}, ""},
		{"several principals", "a@x,b@x " + testEdKey, []string{"a@x,b@x"}, ""},
		{"cert authority", "*@x cert-authority " + testEdKey, nil, "cert-authority"},
		{"valid-before", `a@x valid-before="20300101" ` + testEdKey, nil, "valid-before"},
		{"no key", "a@x\n", nil, "line 1"},
		{"bad key", "a@x ssh-ed25519 AAAA!!\n", nil, "line 1"},
	} {
		got, err := parseAllowedSigners(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s: err = %v, want %q", tc.name, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		var names []string
		for _, s := range got {
			names = append(names, s.principals)
		}
		if !reflect.DeepEqual(names, tc.want) {
			t.Errorf("%s: principals %v, want %v", tc.name, names, tc.want)
		}
	}
	if _, err := newPolicy("", `a@x namespaces="file" `+testEdKey); err == nil {
		t.Error("allowed signers with no git key: no error")
	}
	if _, err := newPolicy("not armored", ""); err == nil {
		t.Error("bad keyring: no error")
	}
	if p, err := newPolicy("", ""); err != nil || p.enabled() {
		t.Errorf("empty policy: %v, enabled %v", err, p.enabled())
	}
}

func TestAuthMethod(t *testing.T) {
	for _, tc := range []struct {
		name string
		auth Auth
		url  string
		want any
	}{
		{"https token", Auth{Token: "t"}, "https://example.com/r.git", &githttp.BasicAuth{Username: "shoal", Password: "t"}},
		{"https token with user", Auth{Username: "u", Token: "t"}, "https://example.com/r.git", &githttp.BasicAuth{Username: "u", Password: "t"}},
		{"https basic", Auth{Username: "u", Password: "p"}, "https://example.com/r.git", &githttp.BasicAuth{Username: "u", Password: "p"}},
		{"https none", Auth{}, "https://example.com/r.git", nil},
		{"file", Auth{Token: "ignored"}, "file:///srv/r.git", nil},
		{"path", Auth{}, "/srv/r.git", nil},
	} {
		got, err := tc.auth.authMethod(tc.url)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if tc.want == nil {
			if got != nil {
				t.Errorf("%s: %#v, want none", tc.name, got)
			}
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: %#v, want %#v", tc.name, got, tc.want)
		}
	}
	// SSH always checks host keys: a missing known_hosts file is an error,
	// never a silent accept-all.
	_, err := Auth{SSHKeyPath: "/nonexistent/id", KnownHostsPath: "/nonexistent/known_hosts"}.authMethod("ssh://git@example.com/r.git")
	if err == nil {
		t.Error("ssh with missing known_hosts: no error")
	}
	if _, err := (Auth{}).authMethod("ftp://example.com/r.git"); err == nil {
		t.Error("ftp: no error")
	}
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"https://u:secret@example.com/r.git": "https://u:xxxxx@example.com/r.git",
		"https://u@example.com/r.git":        "https://u@example.com/r.git",
		"git@example.com:org/r.git":          "git@example.com:org/r.git",
		"/srv/r.git":                         "/srv/r.git",
	} {
		if got := redactURL(in); got != want {
			t.Errorf("redactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestConfigDefaults(t *testing.T) {
	c, err := (&Config{URL: "/r", DataDir: "/d", Branch: "refs/heads/prod", Path: "/deploy//prod/"}).withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if c.Branch != "prod" || c.Path != "deploy/prod" || c.PollInterval != DefaultPollInterval ||
		c.MaxBackoff != DefaultPollInterval || c.MinBackoff != time.Second || c.AnnounceAttempts != DefaultAnnounceAttempts {
		t.Errorf("defaults: %+v", c)
	}
	c, _ = (&Config{URL: "/r", DataDir: "/d"}).withDefaults()
	if c.Branch != "main" || c.Path != "." {
		t.Errorf("defaults: branch %q path %q", c.Branch, c.Path)
	}
	for _, bad := range []Config{{DataDir: "/d"}, {URL: "/r"}} {
		if _, err := New(bad); err == nil {
			t.Errorf("New(%+v): no error", bad)
		}
	}
}

func TestStateRoundTrip(t *testing.T) {
	dir := t.TempDir()
	if st, err := loadState(dir); st != nil || err != nil {
		t.Fatalf("empty dir: %v, %v", st, err)
	}
	rev := &shoal.Revision{
		Commit: strings.Repeat("a", 40), Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		Author: "A <a@x>", Message: "m", Signer: "ssh a@x SHA256:x",
		Spec: &shoal.Spec{Services: []shoal.Service{{Name: "billing", Image: "b:1", Replicas: 5, Resources: shoal.Resources{CPU: 0.5, Memory: 256 << 20}}}, Hash: "h"},
	}
	rev.SpecHash = rev.Spec.Hash
	in := &savedState{Version: stateVersion, URL: "u", Branch: "main", Path: ".", SavedAt: rev.Time, Revision: rev}
	if err := saveState(dir, in); err != nil {
		t.Fatal(err)
	}
	out, err := loadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Errorf("round trip:\n%+v\n%+v", in.Revision, out.Revision)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("temporary files left: %v", entries)
	}
	for name, content := range map[string]string{
		"garbage":    "{",
		"version":    `{"version": 99}`,
		"incomplete": `{"version": 1, "revision": {"commit": "x"}}`,
	} {
		if err := os.WriteFile(filepath.Join(dir, lastGoodFile), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := loadState(dir); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestProgressLog(t *testing.T) {
	var buf bytes.Buffer
	now := time.Unix(0, 0)
	p := newProgressLog(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}})), "cloning", func() time.Time { return now })
	for _, chunk := range []string{"Counting objects:  33% (1/3)\r", "Counting objects:  66% (2/3)\r", "Counting obj", "ects: 100% (3/3), done.\n", "\n"} {
		p.Write([]byte(chunk))
	}
	now = now.Add(2 * time.Second)
	p.Write([]byte("Compressing objects:  50% (1/2)\r"))
	want := `level=INFO msg=cloning progress="Counting objects:  33% (1/3)"
level=INFO msg=cloning progress="Counting objects: 100% (3/3), done."
level=INFO msg=cloning progress="Compressing objects:  50% (1/2)"
`
	if buf.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", buf.String(), want)
	}
}
