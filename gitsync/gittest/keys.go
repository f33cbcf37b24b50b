package gittest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Signer is a key that git can sign commits with.
type Signer interface {
	signArgs() (args, env []string)
}

// OpenPGPKey is an ed25519 OpenPGP key in its own GnuPG home.
type OpenPGPKey struct {
	Home        string // GNUPGHOME
	Email       string
	Fingerprint string
	// Armored is the armored public key, what a trusted keyring holds.
	Armored string
}

// NewOpenPGPKey makes an unprotected ed25519 signing key with gpg.
func NewOpenPGPKey(t testing.TB, email string) *OpenPGPKey {
	t.Helper()
	home, err := os.MkdirTemp("", "gittest-gpg-") // short path: gpg-agent's socket path is limited
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(home, 0o700); err != nil {
		t.Fatal(err)
	}
	k := &OpenPGPKey{Home: home, Email: email}
	t.Cleanup(func() {
		exec.Command("gpgconf", "--homedir", home, "--kill", "all").Run() //nolint:errcheck // best effort
		os.RemoveAll(home)
	})
	k.gpg(t, "--batch", "--passphrase", "", "--quick-gen-key", "Shoal Test <"+email+">", "ed25519", "sign", "never")
	out := k.gpg(t, "--batch", "--with-colons", "--list-secret-keys", email)
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Split(line, ":"); len(f) > 9 && f[0] == "fpr" {
			k.Fingerprint = f[9]
			break
		}
	}
	if k.Fingerprint == "" {
		t.Fatalf("gpg: no fingerprint in %q", out)
	}
	k.Armored = k.gpg(t, "--batch", "--armor", "--export", k.Fingerprint)
	return k
}

func (k *OpenPGPKey) gpg(t testing.TB, args ...string) string {
	t.Helper()
	cmd := exec.Command("gpg", append([]string{"--homedir", k.Home}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("gpg %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}

func (k *OpenPGPKey) signArgs() ([]string, []string) {
	return []string{"-c", "gpg.format=openpgp", "-c", "user.signingkey=" + k.Fingerprint, "-c", "commit.gpgsign=true"},
		[]string{"GNUPGHOME=" + k.Home}
}

// SSHKey is an ed25519 SSH key pair on disk.
type SSHKey struct {
	Private string // path of the private key file
	Public  string // authorized_keys form: "ssh-ed25519 AAAA... comment"
	Email   string
}

// NewSSHKey makes an unprotected ed25519 key pair with ssh-keygen.
func NewSSHKey(t testing.TB, email string) *SSHKey {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, "id_ed25519")
	out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", email, "-f", p).CombinedOutput()
	if err != nil {
		t.Fatalf("ssh-keygen: %v: %s", err, out)
	}
	pub, err := os.ReadFile(p + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	return &SSHKey{Private: p, Public: strings.TrimSpace(string(pub)), Email: email}
}

// AllowedSigner is the key's line in a git allowed_signers file.
func (k *SSHKey) AllowedSigner() string {
	return fmt.Sprintf("%s namespaces=\"git\" %s", k.Email, k.Public)
}

func (k *SSHKey) signArgs() ([]string, []string) {
	return []string{"-c", "gpg.format=ssh", "-c", "user.signingkey=" + k.Private, "-c", "commit.gpgsign=true"}, nil
}
