package store

import (
	"cmp"
	"fmt"
	"sync"
	"time"
)

// Version orders writes to one key across sites: a hybrid logical clock
// reading (wall nanoseconds, then a logical counter) with the site that
// made the write as the last tie-break. Later versions win.
type Version struct {
	Wall    int64  `json:"wall"`    // Unix nanoseconds of the writer's clock
	Logical uint32 `json:"logical"` // orders writes within one Wall
	Site    string `json:"site"`    // the origin site
}

// Compare returns -1, 0 or +1 as v is older than, equal to or newer than w.
func (v Version) Compare(w Version) int {
	if c := cmp.Compare(v.Wall, w.Wall); c != 0 {
		return c
	}
	if c := cmp.Compare(v.Logical, w.Logical); c != 0 {
		return c
	}
	return cmp.Compare(v.Site, w.Site)
}

// IsZero reports whether v is the zero version (never written).
func (v Version) IsZero() bool { return v == Version{} }

func (v Version) String() string {
	return fmt.Sprintf("%d.%d@%s", v.Wall, v.Logical, v.Site)
}

// Clock is a hybrid logical clock: readings never go backwards and stay
// close to wall time, and Observe pulls it past versions seen from others.
type Clock struct {
	Site string
	Now  func() time.Time // default time.Now

	mu      sync.Mutex
	wall    int64
	logical uint32
}

// Next returns a version newer than every version this clock has issued or
// observed.
func (c *Clock) Next() Version {
	now := time.Now
	if c.Now != nil {
		now = c.Now
	}
	pt := now().UnixNano()
	c.mu.Lock()
	defer c.mu.Unlock()
	if pt > c.wall {
		c.wall, c.logical = pt, 0
	} else {
		c.logical++
	}
	return Version{Wall: c.wall, Logical: c.logical, Site: c.Site}
}

// Observe moves the clock past v, so the next reading is newer than v.
func (c *Clock) Observe(v Version) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if v.Wall > c.wall || (v.Wall == c.wall && v.Logical > c.logical) {
		c.wall, c.logical = v.Wall, v.Logical
	}
}
