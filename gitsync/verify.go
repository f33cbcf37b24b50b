package gitsync

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/hiddeco/sshsig"
	"golang.org/x/crypto/ssh"
)

// Verification errors. A commit refused by the policy carries one of them.
var (
	ErrUnsigned  = errors.New("gitsync: commit is not signed")
	ErrUntrusted = errors.New("gitsync: commit not signed by a trusted key")
)

const (
	sshSigPrefix  = "-----BEGIN SSH SIGNATURE-----"
	pgpSigPrefix  = "-----BEGIN PGP SIGNATURE-----"
	sshNamespace  = "git"
	signerSSH     = "ssh"
	signerOpenPGP = "openpgp"
)

// policy decides whether a commit is signed by a trusted key. The zero
// policy trusts everything (no verification).
type policy struct {
	pgpArmored string // re-read by go-git's Commit.Verify
	pgp        openpgp.EntityList
	ssh        []allowedSigner
}

type allowedSigner struct {
	principals string
	key        ssh.PublicKey
}

func newPolicy(armoredKeyring, allowedSigners string) (*policy, error) {
	p := &policy{}
	if strings.TrimSpace(armoredKeyring) != "" {
		el, err := openpgp.ReadArmoredKeyRing(strings.NewReader(armoredKeyring))
		if err != nil {
			return nil, fmt.Errorf("gitsync: read trusted openpgp keyring: %w", err)
		}
		if len(el) == 0 {
			return nil, errors.New("gitsync: trusted openpgp keyring holds no keys")
		}
		p.pgpArmored, p.pgp = armoredKeyring, el
	}
	if strings.TrimSpace(allowedSigners) != "" {
		signers, err := parseAllowedSigners(allowedSigners)
		if err != nil {
			return nil, err
		}
		if len(signers) == 0 {
			return nil, errors.New("gitsync: allowed signers holds no keys for namespace git")
		}
		p.ssh = signers
	}
	return p, nil
}

// enabled reports whether any trusted key is configured.
func (p *policy) enabled() bool { return len(p.pgp) > 0 || len(p.ssh) > 0 }

// parseAllowedSigners reads the allowed_signers format of ssh-keygen(1):
// "principals [options] keytype base64-key [comment]" per line. Keys whose
// namespaces option excludes "git" are skipped; cert-authority lines are
// refused, since certificates are not supported.
func parseAllowedSigners(content string) ([]allowedSigner, error) {
	var out []allowedSigner
	sc := bufio.NewScanner(strings.NewReader(content))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		principals, rest, ok := strings.Cut(line, " ")
		if !ok {
			return nil, fmt.Errorf("gitsync: allowed signers line %d: want principals and a key", n)
		}
		key, _, options, _, err := ssh.ParseAuthorizedKey([]byte(strings.TrimSpace(rest)))
		if err != nil {
			return nil, fmt.Errorf("gitsync: allowed signers line %d: %w", n, err)
		}
		skip := false
		for _, o := range options {
			name, val, _ := strings.Cut(o, "=")
			switch strings.ToLower(name) {
			case "cert-authority":
				return nil, fmt.Errorf("gitsync: allowed signers line %d: cert-authority is not supported", n)
			case "namespaces":
				skip = true
				for _, ns := range strings.Split(strings.Trim(val, `"`), ",") {
					if ns == sshNamespace || ns == "*" {
						skip = false
					}
				}
			case "valid-after", "valid-before":
				return nil, fmt.Errorf("gitsync: allowed signers line %d: option %s is not supported", n, name)
			}
		}
		if !skip {
			out = append(out, allowedSigner{principals: principals, key: key})
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("gitsync: read allowed signers: %w", err)
	}
	return out, nil
}

// verify checks c's signature against the policy and names the signer as
// "openpgp <fingerprint> <identity>" or "ssh <principals> <SHA256 fingerprint>".
// With no trusted keys configured it returns "" and nil.
func (p *policy) verify(c *object.Commit) (string, error) {
	if !p.enabled() {
		return "", nil
	}
	sig := strings.TrimSpace(c.PGPSignature)
	switch {
	case sig == "":
		return "", ErrUnsigned
	case strings.HasPrefix(sig, sshSigPrefix):
		if len(p.ssh) == 0 {
			return "", fmt.Errorf("%w: ssh signature, and no ssh allowed signers are configured", ErrUntrusted)
		}
		return p.verifySSH(c)
	case strings.HasPrefix(sig, pgpSigPrefix):
		if len(p.pgp) == 0 {
			return "", fmt.Errorf("%w: openpgp signature, and no openpgp keyring is configured", ErrUntrusted)
		}
		e, err := c.Verify(p.pgpArmored)
		if err != nil {
			return "", fmt.Errorf("%w: openpgp: %v", ErrUntrusted, err)
		}
		return fmt.Sprintf("%s %X %s", signerOpenPGP, e.PrimaryKey.Fingerprint, primaryIdentity(e)), nil
	}
	return "", fmt.Errorf("%w: unsupported signature format", ErrUntrusted)
}

func (p *policy) verifySSH(c *object.Commit) (string, error) {
	sig, err := sshsig.Unarmor([]byte(c.PGPSignature))
	if err != nil {
		return "", fmt.Errorf("%w: ssh: %v", ErrUntrusted, err)
	}
	msg, err := encodeWithoutSignature(c)
	if err != nil {
		return "", err
	}
	fp := ssh.FingerprintSHA256(sig.PublicKey)
	for _, s := range p.ssh {
		if ssh.FingerprintSHA256(s.key) != fp {
			continue
		}
		if err := sshsig.Verify(bytes.NewReader(msg), sig, s.key, sig.HashAlgorithm, sshNamespace); err != nil {
			return "", fmt.Errorf("%w: ssh: %v", ErrUntrusted, err)
		}
		return fmt.Sprintf("%s %s %s", signerSSH, s.principals, fp), nil
	}
	return "", fmt.Errorf("%w: ssh key %s is not an allowed signer", ErrUntrusted, fp)
}

func encodeWithoutSignature(c *object.Commit) ([]byte, error) {
	o := &plumbing.MemoryObject{}
	if err := c.EncodeWithoutSignature(o); err != nil {
		return nil, fmt.Errorf("encode commit %s: %w", c.Hash, err)
	}
	r, err := o.Reader()
	if err != nil {
		return nil, fmt.Errorf("encode commit %s: %w", c.Hash, err)
	}
	defer r.Close()
	return io.ReadAll(r)
}

func primaryIdentity(e *openpgp.Entity) string {
	if id := e.PrimaryIdentity(); id != nil {
		return id.Name
	}
	for name := range e.Identities {
		return name
	}
	return ""
}
