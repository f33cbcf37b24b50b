package gitsync_test

import (
	"strings"
	"testing"

	"github.com/shoal-run/shoal/gitsync"
	"github.com/shoal-run/shoal/gitsync/gittest"
)

func TestVerifyOpenPGP(t *testing.T) {
	trusted := gittest.NewOpenPGPKey(t, "release@shoal.invalid")
	stranger := gittest.NewOpenPGPKey(t, "mallory@shoal.invalid")
	sshKey := gittest.NewSSHKey(t, "ssh@shoal.invalid")
	r := gittest.New(t)
	c1 := r.Commit("signed", map[string]string{"billing.yaml": billingYAML}, gittest.SignedBy(trusted))
	h := start(t, gitsync.Config{URL: r.URL(), TrustedPGPKeyring: trusted.Armored})
	rev := h.expect(c1)
	if !strings.HasPrefix(rev.Signer, "openpgp "+trusted.Fingerprint) || !strings.Contains(rev.Signer, "release@shoal.invalid") {
		t.Errorf("signer %q, want openpgp %s ...", rev.Signer, trusted.Fingerprint)
	}
	if st := h.s.Status(); !st.Verified || !st.VerifyRequired || st.Signer != rev.Signer {
		t.Errorf("status: %+v", st)
	}

	for _, tc := range []struct {
		name string
		opts []gittest.CommitOption
		want string
	}{
		{"unsigned", nil, "not signed"},
		{"untrusted openpgp key", []gittest.CommitOption{gittest.SignedBy(stranger)}, "not signed by a trusted key"},
		{"ssh key with no allowed signers", []gittest.CommitOption{gittest.SignedBy(sshKey)}, "no ssh allowed signers"},
	} {
		c := r.Commit(tc.name, map[string]string{"web.yaml": webYAML + "# " + tc.name + "\n"}, tc.opts...)
		h.s.Trigger()
		e := h.waitError(gitsync.ErrorVerify, c)
		if !strings.Contains(e.Message, tc.want) {
			t.Errorf("%s: error %q, want it to mention %q", tc.name, e.Message, tc.want)
		}
		h.noRevision()
		if cur := h.s.Current(); cur.Commit != c1 {
			t.Fatalf("%s: current %s, want %s", tc.name, cur.Short(), c1)
		}
		if st := h.s.Status(); !st.Verified || st.Commit != c1 || st.Head != c {
			t.Errorf("%s: status %+v", tc.name, st)
		}
	}
	c5 := r.Commit("signed again", map[string]string{"web.yaml": webYAML}, gittest.SignedBy(trusted))
	h.s.Trigger()
	h.expect(c5)
	if st := h.s.Status(); st.Error != nil {
		t.Errorf("error not cleared: %+v", st.Error)
	}
}

func TestVerifySSH(t *testing.T) {
	trusted := gittest.NewSSHKey(t, "release@shoal.invalid")
	stranger := gittest.NewSSHKey(t, "mallory@shoal.invalid")
	pgp := gittest.NewOpenPGPKey(t, "pgp@shoal.invalid")
	r := gittest.New(t)
	c1 := r.Commit("signed", map[string]string{"billing.yaml": billingYAML}, gittest.SignedBy(trusted))
	allowed := "# fleet signers\n" + trusted.AllowedSigner() + "\n" +
		// A key allowed only for another namespace is not trusted for commits.
		`other@shoal.invalid namespaces="file" ` + stranger.Public + "\n"
	h := start(t, gitsync.Config{URL: r.URL(), AllowedSigners: allowed})
	rev := h.expect(c1)
	if !strings.HasPrefix(rev.Signer, "ssh release@shoal.invalid SHA256:") {
		t.Errorf("signer %q", rev.Signer)
	}
	for _, tc := range []struct {
		name string
		opts []gittest.CommitOption
		want string
	}{
		{"unsigned", nil, "not signed"},
		{"untrusted ssh key", []gittest.CommitOption{gittest.SignedBy(stranger)}, "not an allowed signer"},
		{"openpgp key with no keyring", []gittest.CommitOption{gittest.SignedBy(pgp)}, "no openpgp keyring"},
	} {
		c := r.Commit(tc.name, map[string]string{"web.yaml": webYAML + "# " + tc.name + "\n"}, tc.opts...)
		h.s.Trigger()
		e := h.waitError(gitsync.ErrorVerify, c)
		if !strings.Contains(e.Message, tc.want) {
			t.Errorf("%s: error %q, want it to mention %q", tc.name, e.Message, tc.want)
		}
		h.noRevision()
		if cur := h.s.Current(); cur.Commit != c1 {
			t.Fatalf("%s: current %s, want %s", tc.name, cur.Short(), c1)
		}
	}

	// A signed commit whose content was altered after signing: take the
	// trusted signature and graft it onto a different commit object.
	forged := r.ForgeSignature(c1, "forged", map[string]string{"evil.yaml": strings.ReplaceAll(webYAML, "web", "evil")})
	h.s.Trigger()
	e := h.waitError(gitsync.ErrorVerify, forged)
	if !strings.Contains(e.Message, "not signed by a trusted key") {
		t.Errorf("forged: error %q", e.Message)
	}
	h.noRevision()

	c5 := r.Commit("signed again", map[string]string{"web.yaml": webYAML}, gittest.SignedBy(trusted))
	h.s.Trigger()
	h.expect(c5)
}

// TestVerifyBothKinds trusts an OpenPGP keyring and SSH signers at once.
func TestVerifyBothKinds(t *testing.T) {
	pgp := gittest.NewOpenPGPKey(t, "pgp@shoal.invalid")
	sshKey := gittest.NewSSHKey(t, "ssh@shoal.invalid")
	r := gittest.New(t)
	c1 := r.Commit("pgp", map[string]string{"billing.yaml": billingYAML}, gittest.SignedBy(pgp))
	h := start(t, gitsync.Config{URL: r.URL(), TrustedPGPKeyring: pgp.Armored, AllowedSigners: sshKey.AllowedSigner()})
	h.expect(c1)
	c2 := r.Commit("ssh", map[string]string{"web.yaml": webYAML}, gittest.SignedBy(sshKey))
	h.s.Trigger()
	if rev := h.expect(c2); !strings.HasPrefix(rev.Signer, "ssh ") {
		t.Errorf("signer %q", rev.Signer)
	}
}
