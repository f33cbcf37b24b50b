package gitsync

import (
	"time"

	"github.com/shoal-run/shoal"
)

// Status is what the syncer reports about itself.
type Status struct {
	URL    string `json:"url"`
	Branch string `json:"branch"`
	Path   string `json:"path"`
	// Commit is the revision in force (the last good one), or "".
	Commit string `json:"commit,omitempty"`
	// Restored is set while the revision in force came from disk at start
	// and has not been confirmed by a fetch yet.
	Restored bool `json:"restored,omitempty"`
	// Head is the remote branch head last seen, which may differ from
	// Commit when it was refused.
	Head string `json:"head,omitempty"`
	// LastFetch is when the remote was last reached successfully, and
	// LastAttempt when it was last tried.
	LastFetch   time.Time `json:"last_fetch,omitzero"`
	LastAttempt time.Time `json:"last_attempt,omitzero"`
	// VerifyRequired says trusted keys are configured; Verified says the
	// commit in force passed verification, by Signer.
	VerifyRequired bool   `json:"verify_required"`
	Verified       bool   `json:"verified"`
	Signer         string `json:"signer,omitempty"`
	// Error is the most pressing problem: the remote cannot be reached or
	// read, or else the newest head was refused; nil when all is well.
	Error *SyncError `json:"error,omitempty"`
	// Refused is why the newest head seen is not in force (a verify,
	// validate or history error), kept even while Error reports that the
	// remote is down.
	Refused *SyncError `json:"refused,omitempty"`
}

// What a SyncError is about.
const (
	ErrorFetch    = "fetch"    // the remote could not be reached or read
	ErrorVerify   = "verify"   // the head is not signed by a trusted key
	ErrorValidate = "validate" // the head's spec is invalid
	ErrorHistory  = "history"  // the head does not descend from the current revision
	ErrorRead     = "read"     // the local clone is damaged; it is re-cloned
	// ErrorEvaluate: evaluating the head did not finish (too slow, out of
	// memory, crashed), here or in a process that died on it. The head
	// is refused for good, across restarts.
	ErrorEvaluate = "evaluate"
)

// SyncError records why the newest head is not in force.
type SyncError struct {
	What    string `json:"what"`
	Commit  string `json:"commit,omitempty"`
	Message string `json:"message"`
	// Fields lists spec errors with file, line and field when What is
	// "validate".
	Fields []shoal.FieldError `json:"fields,omitempty"`
	// Since is when this error (same what and commit) was first seen;
	// Attempts counts how many times in a row it was seen.
	Since    time.Time `json:"since"`
	Attempts int       `json:"attempts"`
}

func (e *SyncError) Error() string {
	if e.Commit != "" {
		return e.What + " " + short(e.Commit) + ": " + e.Message
	}
	return e.What + ": " + e.Message
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}
