package store

import (
	"cmp"
	"fmt"
)

// Epoch identifies one assignment of a partition's owners, or one version
// of the partition table: the table version at which it was made and the
// member (the senior of the time) that made it. Epochs order by version,
// then author.
type Epoch struct {
	Ver    uint64 `json:"ver"`
	Author string `json:"author"`
}

// Compare orders epochs.
func (e Epoch) Compare(f Epoch) int {
	if c := cmp.Compare(e.Ver, f.Ver); c != 0 {
		return c
	}
	return cmp.Compare(e.Author, f.Author)
}

func (e Epoch) String() string { return fmt.Sprintf("%d/%s", e.Ver, e.Author) }

// Journal operations.
const (
	opPut    byte = 1
	opDelete byte = 2
	opClear  byte = 3
	// opFedMark records how far a sender site's journal has been applied
	// here (FedFrom, FedSeq), and which of its replicate-all (Gen) or
	// start-with-no-backlog (NoBacklog) rounds completed. Not shipped.
	opFedMark byte = 4
)

// Fates of a received change.
const (
	fateApplied    byte = 0
	fateDuplicate  byte = 1
	fateSuperseded byte = 2
)

// jentry is one journaled change of a partition (Seq > 0), or a requested
// change before the primary has numbered it (Seq 0).
type jentry struct {
	Seq     uint64
	Epoch   Epoch // the partition epoch under which the primary numbered it
	Op      byte
	Cache   string
	Key     string
	Value   []byte
	Ver     Version // its Site is the change's origin
	Expires int64   // Unix nanoseconds; 0: never

	// Federation: a change received from site FedFrom, where it had
	// journal seq FedSeq (0 for replicate-all items, which are not in
	// sequence).
	FedFrom string
	FedSeq  uint64
	// Fate of a received change: applied, a duplicate (its version was
	// here already) or superseded (a newer version was here). Only applied
	// changes change data or are shipped on.
	Fate byte
	// opFedMark only: the completed rounds.
	Gen       uint64
	NoBacklog uint64
}

func (e *enc) jentry(j *jentry) {
	e.uv(j.Seq)
	e.epoch(j.Epoch)
	e.u8(j.Op)
	e.str(j.Cache)
	e.str(j.Key)
	e.bytes(j.Value)
	e.version(j.Ver)
	e.iv(j.Expires)
	e.str(j.FedFrom)
	e.uv(j.FedSeq)
	e.u8(j.Fate)
	e.uv(j.Gen)
	e.uv(j.NoBacklog)
}

func (d *dec) jentry() jentry {
	j := jentry{Seq: d.uv(), Epoch: d.epoch(), Op: d.u8(), Cache: d.str(), Key: d.str()}
	j.Value, j.Ver, j.Expires = d.bytes(), d.version(), d.iv()
	j.FedFrom, j.FedSeq, j.Fate, j.Gen, j.NoBacklog = d.str(), d.uv(), d.u8(), d.uv(), d.uv()
	if d.err == nil && (j.Op < opPut || j.Op > opFedMark) {
		d.fail(fmt.Errorf("store message: bad operation %d", j.Op))
	}
	return j
}

// item is one key's state in a snapshot.
type item struct {
	Cache   string
	Key     string
	Value   []byte
	Ver     Version
	Expires int64
	Deleted bool // a tombstone
}

func (e *enc) item(it *item) {
	e.str(it.Cache)
	e.str(it.Key)
	e.bytes(it.Value)
	e.version(it.Ver)
	e.iv(it.Expires)
	e.boolean(it.Deleted)
}

func (d *dec) item() item {
	it := item{Cache: d.str(), Key: d.str(), Value: d.bytes(), Ver: d.version()}
	it.Expires, it.Deleted = d.iv(), d.boolean()
	return it
}

// Table assigns every partition of one service to its owners. It is made by
// the senior member and pushed to every member; members keep the newest.
type Table struct {
	Lineage string      `json:"lineage"` // random id of the table's history
	Epoch   Epoch       `json:"epoch"`   // the table's version
	Parts   []PartTable `json:"partitions"`
	// Fed is the site-wide state of each federation participant, which
	// the senior keeps with the table so that every member acts on the
	// same, and a new senior carries it on.
	Fed []FedControl `json:"federation,omitempty"`
}

// FedControl is the operator's state of one participant.
type FedControl struct {
	Site  string `json:"site"`
	State string `json:"state"` // started, paused, stopped, error
	// Gen counts replicate-all requests; partitions whose receiver has
	// completed round Gen are done.
	Gen uint64 `json:"replicate_all_gen,omitempty"`
	// NoBacklog counts start-with-no-backlog requests, done likewise.
	NoBacklog uint64 `json:"no_backlog_gen,omitempty"`
	Reason    string `json:"reason,omitempty"` // why it is in error
}

// PartTable is one partition's entry in the table.
type PartTable struct {
	Epoch  Epoch    `json:"epoch"`  // changes whenever Owners change
	Owners []string `json:"owners"` // [0] is the primary, the rest backups
	// Synced lists the owners that held the partition fully when the table
	// was made (the primary always does).
	Synced []string `json:"synced"`
	// Fresh: no live member held the partition, so its primary starts it
	// empty.
	Fresh bool `json:"fresh,omitempty"`
}

// Primary returns the partition's primary, or "".
func (p *PartTable) Primary() string {
	if len(p.Owners) == 0 {
		return ""
	}
	return p.Owners[0]
}

func (e *enc) table(t *Table) {
	e.str(t.Lineage)
	e.epoch(t.Epoch)
	e.uv(uint64(len(t.Parts)))
	for i := range t.Parts {
		p := &t.Parts[i]
		e.epoch(p.Epoch)
		e.strs(p.Owners)
		e.strs(p.Synced)
		e.boolean(p.Fresh)
	}
	e.uv(uint64(len(t.Fed)))
	for _, f := range t.Fed {
		e.str(f.Site)
		e.str(f.State)
		e.uv(f.Gen)
		e.uv(f.NoBacklog)
		e.str(f.Reason)
	}
}

func (d *dec) table() *Table {
	t := &Table{Lineage: d.str(), Epoch: d.epoch()}
	n := d.n(4)
	t.Parts = make([]PartTable, n)
	for i := range t.Parts {
		t.Parts[i] = PartTable{Epoch: d.epoch(), Owners: d.strs(), Synced: d.strs(), Fresh: d.boolean()}
	}
	for range d.n(5) {
		t.Fed = append(t.Fed, FedControl{Site: d.str(), State: d.str(), Gen: d.uv(), NoBacklog: d.uv(), Reason: d.str()})
	}
	return t
}

// partState is what a member holds of one partition.
type partState struct {
	Part        int
	SyncedEpoch Epoch  // the last epoch under which it held the partition fully
	LastSeq     uint64 // the last journaled change it holds
	LastEpoch   Epoch  // the epoch of that change
}

// state is what a member reports to the senior.
type state struct {
	Lineage string
	Table   Epoch // the version of its table (zero: none)
	Parts   []partState
}

// Request types.
const (
	reqState     byte = 1 // -> state
	reqTable     byte = 2 // -> table
	reqPushTable byte = 3 // table
	reqWrite     byte = 4 // part, ops -> results
	reqRead      byte = 5 // part, cache, key -> found, item
	reqProbe     byte = 6 // part, epoch -> holds, lastSeq, lastEpoch
	reqInstall   byte = 7 // part, epoch, snapshot chunk or delta entries
	reqReplicate byte = 8 // part, epoch, entries
	reqList      byte = 9 // parts, cache, prefix, cursor, limit -> keys, missing
	reqSizes     byte = 10
	reqKick      byte = 11 // ask the senior to recompute the table now
	reqJournal   byte = 12 // part, cursor(seq), limit -> entries
	reqFedApply  byte = 13 // part, site, entries (+ mark) -> applied position
	reqFedShip   byte = 14 // between sites: part, entries, last seq, gen... -> applied position
	reqFedCtl    byte = 15 // to the senior: site, key (action)
	reqFedStatus byte = 16 // -> this member's federation figures (json in Msg)
	reqDigest    byte = 17 // parts -> per partition digest (Keys: "part:count:hash")
	reqPartKeys  byte = 18 // part -> every live key with its version (Keys)
)

// Response statuses.
const (
	stOK         byte = 0
	stNotPrimary byte = 1 // the receiver is not the partition's primary
	stStale      byte = 2 // the sender's partition epoch is not the receiver's
	stNeedSync   byte = 3 // the receiver does not hold the partition under this epoch
	stNoTable    byte = 4 // the receiver has no table yet
	stError      byte = 5 // anything else; see Msg
	stTooLarge   byte = 6
	stBadName    byte = 7
	stFull       byte = 8 // the journal limit is reached (policy block)
	stRefused    byte = 9 // federation: this site does not take changes from the sender
)

// req is every intra-site request; each type uses some of the fields.
type req struct {
	Type     byte
	Service  string
	From     string
	Part     int
	Epoch    Epoch
	Table    *Table
	Ops      []jentry // write; replicate and install: journal entries
	Items    []item   // install: snapshot chunk
	Snapshot bool     // install: a snapshot (else a delta of Ops)
	First    bool     // install: first chunk
	Last     bool     // install: last chunk
	LastSeq  uint64   // install: the partition's last seq when complete
	LastEp   Epoch    // install: its epoch
	Parts    []int
	Cache    string
	Key      string
	Prefix   string
	Cursor   string
	Limit    int
	// Federation.
	Site      string   // reqFedShip/reqFedApply: the sending site; reqFedCtl: the participant
	Gen       uint64   // reqFedShip: replicate-all round of a snapshot batch
	NoBacklog uint64   // reqFedShip: no-backlog round being completed
	NParts    int      // reqFedShip: the sender's partition count
	Purge     uint64   // reqReplicate: the backup may drop journal entries up to here
	Born      uint64   // reqInstall: the seq the partition's history starts after
	Positions []fedPos // reqInstall (last chunk): what the partition has applied from other sites
}

// fedPos is a partition's position in another site's journal.
type fedPos struct {
	Site      string
	Seq       uint64 // the sender's last seq applied here
	Gen       uint64 // the last replicate-all round completed
	NoBacklog uint64 // the last no-backlog round completed
	Applied   uint64 // changes applied (counted once each)
	Dups      uint64 // changes that arrived twice (their version was here)
	Lost      uint64 // changes superseded by a newer version here (last writer wins)
}

// resp answers a req.
type resp struct {
	Status  byte
	Msg     string
	Table   *Table // table; or the receiver's newer table with stStale/stNotPrimary
	State   *state
	Results []bool // write: existed before
	Found   bool
	Item    item
	Holds   bool
	LastSeq uint64
	LastEp  Epoch
	Keys    []string
	Missing []int // list/sizes: partitions the receiver is not primary of
	Sizes   map[string]int64
	Entries []jentry
	// Federation: the receiver's position in the sender's journal.
	Pos fedPos
}

const maxParts = 8191

func (e *enc) fedPos(p *fedPos) {
	e.str(p.Site)
	e.uv(p.Seq)
	e.uv(p.Gen)
	e.uv(p.NoBacklog)
	e.uv(p.Applied)
	e.uv(p.Dups)
	e.uv(p.Lost)
}

func (d *dec) fedPos() fedPos {
	return fedPos{Site: d.str(), Seq: d.uv(), Gen: d.uv(), NoBacklog: d.uv(), Applied: d.uv(), Dups: d.uv(), Lost: d.uv()}
}

func encodeReq(r *req) []byte {
	e := &enc{b: make([]byte, 0, 64)}
	e.u8(r.Type)
	e.str(r.Service)
	e.str(r.From)
	e.uv(uint64(r.Part))
	e.epoch(r.Epoch)
	e.boolean(r.Table != nil)
	if r.Table != nil {
		e.table(r.Table)
	}
	e.uv(uint64(len(r.Ops)))
	for i := range r.Ops {
		e.jentry(&r.Ops[i])
	}
	e.uv(uint64(len(r.Items)))
	for i := range r.Items {
		e.item(&r.Items[i])
	}
	e.boolean(r.Snapshot)
	e.boolean(r.First)
	e.boolean(r.Last)
	e.uv(r.LastSeq)
	e.epoch(r.LastEp)
	e.uv(uint64(len(r.Parts)))
	for _, p := range r.Parts {
		e.uv(uint64(p))
	}
	e.str(r.Cache)
	e.str(r.Key)
	e.str(r.Prefix)
	e.str(r.Cursor)
	e.uv(uint64(r.Limit))
	e.str(r.Site)
	e.uv(r.Gen)
	e.uv(r.NoBacklog)
	e.uv(uint64(r.NParts))
	e.uv(r.Purge)
	e.uv(uint64(len(r.Positions)))
	for i := range r.Positions {
		e.fedPos(&r.Positions[i])
	}
	e.uv(r.Born)
	return e.b
}

func (d *dec) part() int {
	v := d.uv()
	if v > maxParts {
		d.fail(fmt.Errorf("store message: partition %d out of range", v))
		return 0
	}
	return int(v)
}

func decodeReq(b []byte) (*req, error) {
	d := &dec{b: b}
	r := &req{Type: d.u8(), Service: d.str(), From: d.str(), Part: d.part(), Epoch: d.epoch()}
	if d.boolean() {
		r.Table = d.table()
	}
	for range d.n(8) {
		r.Ops = append(r.Ops, d.jentry())
	}
	for range d.n(7) {
		r.Items = append(r.Items, d.item())
	}
	r.Snapshot, r.First, r.Last = d.boolean(), d.boolean(), d.boolean()
	r.LastSeq, r.LastEp = d.uv(), d.epoch()
	for range d.n(1) {
		r.Parts = append(r.Parts, d.part())
	}
	r.Cache, r.Key, r.Prefix, r.Cursor = d.str(), d.str(), d.str(), d.str()
	if l := d.uv(); l <= 1<<20 {
		r.Limit = int(l)
	} else {
		d.fail(fmt.Errorf("store message: limit %d out of range", l))
	}
	r.Site, r.Gen, r.NoBacklog = d.str(), d.uv(), d.uv()
	r.NParts = d.part()
	r.Purge = d.uv()
	for range d.n(6) {
		r.Positions = append(r.Positions, d.fedPos())
	}
	if len(d.b) > 0 {
		// Born came last, after the first release: a message from an
		// instance without it decodes with Born 0.
		r.Born = d.uv()
	}
	if err := d.done(); err != nil {
		return nil, err
	}
	if r.Type < reqState || r.Type > reqPartKeys {
		return nil, fmt.Errorf("store message: unknown request type %d", r.Type)
	}
	return r, nil
}

func encodeResp(r *resp) []byte {
	e := &enc{b: make([]byte, 0, 32)}
	e.u8(r.Status)
	e.str(r.Msg)
	e.boolean(r.Table != nil)
	if r.Table != nil {
		e.table(r.Table)
	}
	e.boolean(r.State != nil)
	if s := r.State; s != nil {
		e.str(s.Lineage)
		e.epoch(s.Table)
		e.uv(uint64(len(s.Parts)))
		for _, p := range s.Parts {
			e.uv(uint64(p.Part))
			e.epoch(p.SyncedEpoch)
			e.uv(p.LastSeq)
			e.epoch(p.LastEpoch)
		}
	}
	e.uv(uint64(len(r.Results)))
	for _, v := range r.Results {
		e.boolean(v)
	}
	e.boolean(r.Found)
	e.item(&r.Item)
	e.boolean(r.Holds)
	e.uv(r.LastSeq)
	e.epoch(r.LastEp)
	e.strs(r.Keys)
	e.uv(uint64(len(r.Missing)))
	for _, p := range r.Missing {
		e.uv(uint64(p))
	}
	e.uv(uint64(len(r.Sizes)))
	for k, v := range r.Sizes {
		e.str(k)
		e.iv(v)
	}
	e.uv(uint64(len(r.Entries)))
	for i := range r.Entries {
		e.jentry(&r.Entries[i])
	}
	e.fedPos(&r.Pos)
	return e.b
}

func decodeResp(b []byte) (*resp, error) {
	d := &dec{b: b}
	r := &resp{Status: d.u8(), Msg: d.str()}
	if d.boolean() {
		r.Table = d.table()
	}
	if d.boolean() {
		s := &state{Lineage: d.str(), Table: d.epoch()}
		for range d.n(4) {
			s.Parts = append(s.Parts, partState{Part: d.part(), SyncedEpoch: d.epoch(), LastSeq: d.uv(), LastEpoch: d.epoch()})
		}
		r.State = s
	}
	for range d.n(1) {
		r.Results = append(r.Results, d.boolean())
	}
	r.Found, r.Item, r.Holds = d.boolean(), d.item(), d.boolean()
	r.LastSeq, r.LastEp = d.uv(), d.epoch()
	r.Keys = d.strs()
	for range d.n(1) {
		r.Missing = append(r.Missing, d.part())
	}
	if n := d.n(2); n > 0 {
		r.Sizes = make(map[string]int64, n)
		for range n {
			k := d.str()
			r.Sizes[k] = d.iv()
		}
	}
	for range d.n(8) {
		r.Entries = append(r.Entries, d.jentry())
	}
	r.Pos = d.fedPos()
	if err := d.done(); err != nil {
		return nil, err
	}
	return r, nil
}
