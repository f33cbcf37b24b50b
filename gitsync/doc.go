// Package gitsync is the "GitOps, pull-based" half of Shoal: it keeps a
// node's copy of the spec repository current and hands the caller each new
// revision that is signed by a trusted key and holds a valid spec, and it
// never lets go of the last good one.
//
// # The loop
//
// A Syncer follows one branch (default "main") of one repository, and
// optionally one directory of it (Config.Path). Run first restores the
// last good revision saved in the data directory (DataDir/last-good.json,
// spec included) and emits it through Config.OnRevision before touching the
// network, so a node rebooted without network starts with its desired
// state. It then keeps a bare clone (DataDir/repo.git, no worktree) current:
//
//   - it fetches every PollInterval (default 30 s, ±10 % jitter). An idle
//     fetch is one small request, the remote's ref advertisement; objects
//     travel only when the head moved;
//   - Trigger fetches at once; WebhookHandler serves push webhooks signed
//     with X-Hub-Signature-256 (GitHub, Gitea, Forgejo) and refuses
//     anything unsigned or mis-signed with 401;
//   - Announce(commit) is for a commit heard from a peer: the syncer
//     fetches until it is present, a bounded number of times with backoff,
//     so one node that notices a push wakes the whole fleet. Announcements
//     start at most one fetch per Config.AnnounceInterval (default 1 s).
//
// For each new head the syncer checks its history (a head that does not
// descend from the revision in force is a force-push: refused by default
// when trusted keys are configured, otherwise followed with a warning;
// Config.RefuseNonFastForward and AllowNonFastForward override), checks its
// signature against the trusted keys, reads the spec tree straight from Git
// objects through TreeFS, and validates it with shoal.LoadSpec — in a child
// process with memory, CPU and time limits when Config.EvalCommand is set.
// A head under trial is named in DataDir/pending.json; a head whose
// evaluation did not finish, or that the process died on, is added to
// DataDir/refused.json and never tried again. A head that passes becomes
// the revision in force: it is emitted, then saved atomically. A head that fails, like a remote that cannot be reached, leaves
// the last good revision in force and is recorded in Status (what failed,
// which commit, since when, and the spec's field errors); fetch failures are
// retried with exponential backoff. A clone found damaged is removed and
// cloned again.
//
// # Trust
//
// With Config.TrustedPGPKeyring (armored OpenPGP keys) or
// Config.AllowedSigners (the content of a git allowed_signers file) set, a
// head commit not signed by one of those keys is never emitted, and a saved
// revision is restored only if it passes the same policy. OpenPGP
// signatures are checked by go-git; SSH signatures (git's gpg.format=ssh)
// with github.com/hiddeco/sshsig over the commit without its signature, in
// namespace "git". Revision.Signer names the key that passed.
//
// # Transports
//
// https:// and http:// with a token or user and password, ssh:// and
// scp-style addresses with a key file and known_hosts checking (host keys
// are always checked), and local repositories: file:// URLs and plain
// paths are served by go-git's in-process server, so the product never
// runs a git binary.
//
// # API
//
//	s, err := gitsync.New(gitsync.Config{URL: ..., DataDir: ..., OnRevision: apply})
//	go s.Run(ctx)                     // returns when ctx ends or Close is called
//	mux.Handle("/hooks/git", s.WebhookHandler(secret))
//	s.Announce(commitFromPeer)
//	rev, st := s.Current(), s.Status()
//	s.Close()
//
// OpenRevFS opens the commit of any revision of a local repository as an
// fs.FS, for `shoal validate` and `shoal plan` on a working copy; TreeFS
// does the same for a go-git tree. The gittest subpackage makes real
// repositories, signing keys and HTTP and SSH servers for tests.
package gitsync
