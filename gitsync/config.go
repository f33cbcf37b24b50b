package gitsync

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/go-git/go-git/v5/plumbing/transport"
	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"
	gitssh "github.com/go-git/go-git/v5/plumbing/transport/ssh"

	"github.com/shoal-run/shoal"
)

// Defaults for Config fields left zero.
const (
	DefaultBranch       = "main"
	DefaultPollInterval = 30 * time.Second
	DefaultFetchTimeout = 5 * time.Minute
	// DefaultAnnounceAttempts bounds the fetches made for one announced
	// commit that does not show up on the remote.
	DefaultAnnounceAttempts = 6
	// DefaultAnnounceInterval is the least time between two fetches that
	// announcements start: a storm of random announced commits costs a
	// node one fetch a second, while a real push still reaches the whole
	// fleet within about a second (5 s made push → serving five times
	// slower whenever pushes came less than 5 s apart).
	DefaultAnnounceInterval = time.Second
	// DefaultEvalTimeout and DefaultEvalMemory bound the evaluation of one
	// head in the child process.
	DefaultEvalTimeout = 30 * time.Second
	DefaultEvalMemory  = 1 << 30
)

// Config says which repository to follow and how to trust it.
type Config struct {
	// URL of the spec repository: https://, http://, ssh:// or scp-style
	// (git@host:org/repo.git), file:// or a local path.
	URL string
	// Branch to track; default "main".
	Branch string
	// Path is the directory inside the repository that holds the specs;
	// empty means the whole tree.
	Path string
	// DataDir holds the bare clone (DataDir/repo.git) and the last good
	// revision (DataDir/last-good.json). Required.
	DataDir string
	// Auth holds credentials for the remote; zero means none.
	Auth Auth

	// PollInterval between checks of the remote head; default 30 s. Each
	// wait is jittered by ±10 % so a fleet does not poll in step.
	PollInterval time.Duration
	// MinBackoff and MaxBackoff bound the retry delay after a failed fetch;
	// it doubles from MinBackoff (default 1 s) up to MaxBackoff (default the
	// poll interval).
	MinBackoff, MaxBackoff time.Duration
	// FetchTimeout bounds one clone or fetch; default 5 min.
	FetchTimeout time.Duration
	// AnnounceAttempts bounds the fetches made for one announced commit
	// that is not on the remote yet; default 6, with backoff between them.
	AnnounceAttempts int
	// AnnounceInterval is the least time between fetches started by
	// announcements (default 5 s): peers announcing random commits cannot
	// make a node fetch more often than that. Announcements that arrive
	// meanwhile are served by the next fetch.
	AnnounceInterval time.Duration

	// EvalCommand, when set, is the command line of a child process that
	// evaluates each new head: it must call ServeEvaluation with its
	// standard input and output (the shoal binary's hidden subcommand
	// does). The child runs with EvalMemory of address space (default
	// 1 GiB) and is killed after EvalTimeout (default 30 s); a head whose
	// evaluation does not finish is refused, and remembered as refused
	// across restarts. Empty means evaluating in this process, with no
	// bound on time or memory beyond shoal.LoadSpec's size checks.
	EvalCommand []string
	// EvalEnv is added to the child's environment.
	EvalEnv     []string
	EvalTimeout time.Duration
	EvalMemory  int64

	// TrustedPGPKeyring is an armored OpenPGP public keyring. When it or
	// AllowedSigners is set, a head commit that is not signed by one of
	// their keys is never emitted.
	TrustedPGPKeyring string
	// AllowedSigners is the content of an SSH allowed_signers file
	// (git's gpg.ssh.allowedSignersFile format).
	AllowedSigners string
	// RefuseNonFastForward refuses a new head that does not descend from
	// the current revision (a force-push). Without a signature policy such
	// a head is followed by default, with a warning. With one (trusted keys
	// configured) it is refused by default, since an older signed commit
	// pushed over a newer one would otherwise roll the fleet back; set
	// AllowNonFastForward to follow it anyway.
	RefuseNonFastForward bool
	AllowNonFastForward  bool

	// Logger receives progress and errors; default slog.Default().
	Logger *slog.Logger
	// OnRevision is called, from the Run goroutine, with each new good
	// revision, including the one restored from disk at start.
	OnRevision func(*shoal.Revision)
	// OnPush, when set, is called with the head commit of each push a
	// signed webhook reports, before it is fetched: the agent relays it to
	// its peers so the whole fleet fetches at once. Nothing is trusted
	// from it; each node verifies what it fetches.
	OnPush func(commit string)
	// Now is the clock used for timestamps in Status; default time.Now.
	Now func() time.Time
}

// Auth holds credentials for the remote.
type Auth struct {
	// HTTP(S): Token is sent as the basic-auth password (the form GitHub,
	// GitLab and Gitea accept), with Username or "shoal" as the user; or
	// Username and Password are sent as they are.
	Username, Password, Token string
	// SSH: the private key file, its passphrase, and the known_hosts file
	// the server's host key is checked against (default: the user's
	// ~/.ssh/known_hosts, or $SSH_KNOWN_HOSTS). Host keys are always
	// checked. SSHUser defaults to the URL's user or "git".
	SSHKeyPath, SSHKeyPassphrase, KnownHostsPath, SSHUser string
}

func (c *Config) withDefaults() (Config, error) {
	cfg := *c
	if cfg.URL == "" {
		return cfg, errors.New("gitsync: config: url is required")
	}
	if cfg.DataDir == "" {
		return cfg, errors.New("gitsync: config: data dir is required")
	}
	if cfg.Branch == "" {
		cfg.Branch = DefaultBranch
	}
	cfg.Branch = strings.TrimPrefix(cfg.Branch, "refs/heads/")
	p := path.Clean("/" + strings.TrimSpace(cfg.Path))
	cfg.Path = strings.TrimPrefix(p, "/")
	if cfg.Path == "" {
		cfg.Path = "."
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = time.Second
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = cfg.PollInterval
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = cfg.MinBackoff
	}
	if cfg.FetchTimeout <= 0 {
		cfg.FetchTimeout = DefaultFetchTimeout
	}
	if cfg.AnnounceAttempts <= 0 {
		cfg.AnnounceAttempts = DefaultAnnounceAttempts
	}
	if cfg.AnnounceInterval <= 0 {
		cfg.AnnounceInterval = DefaultAnnounceInterval
	}
	if cfg.EvalTimeout <= 0 {
		cfg.EvalTimeout = DefaultEvalTimeout
	}
	if cfg.EvalMemory <= 0 {
		cfg.EvalMemory = DefaultEvalMemory
	}
	if cfg.RefuseNonFastForward && cfg.AllowNonFastForward {
		return cfg, errors.New("gitsync: config: RefuseNonFastForward and AllowNonFastForward are both set")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return cfg, nil
}

// authMethod builds the go-git credentials for the URL's transport.
func (a Auth) authMethod(rawURL string) (transport.AuthMethod, error) {
	ep, err := transport.NewEndpoint(rawURL)
	if err != nil {
		return nil, fmt.Errorf("parse repository url: %w", err)
	}
	switch ep.Protocol {
	case "http", "https":
		switch {
		case a.Token != "":
			user := a.Username
			if user == "" {
				user = "shoal"
			}
			return &githttp.BasicAuth{Username: user, Password: a.Token}, nil
		case a.Username != "" || a.Password != "":
			return &githttp.BasicAuth{Username: a.Username, Password: a.Password}, nil
		}
		return nil, nil
	case "ssh":
		user := a.SSHUser
		if user == "" {
			user = ep.User
		}
		if user == "" {
			user = "git"
		}
		var hostKeys []string
		if a.KnownHostsPath != "" {
			hostKeys = []string{a.KnownHostsPath}
		}
		cb, err := gitssh.NewKnownHostsCallback(hostKeys...)
		if err != nil {
			return nil, fmt.Errorf("load known hosts: %w", err)
		}
		if a.SSHKeyPath == "" {
			// Fall back to the SSH agent, still with host keys checked.
			am, err := gitssh.NewSSHAgentAuth(user)
			if err != nil {
				return nil, fmt.Errorf("ssh auth: no key path configured and no agent: %w", err)
			}
			am.HostKeyCallback = cb
			return am, nil
		}
		am, err := gitssh.NewPublicKeysFromFile(user, a.SSHKeyPath, a.SSHKeyPassphrase)
		if err != nil {
			return nil, fmt.Errorf("load ssh key %s: %w", a.SSHKeyPath, err)
		}
		am.HostKeyCallback = cb
		return am, nil
	case "file":
		return nil, nil
	}
	return nil, fmt.Errorf("unsupported repository url scheme %q", ep.Protocol)
}

// redactURL drops any password from a URL before it is logged.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}
