/* Exact Connect Four solver as a CPython extension.

   Written for Conclave (not derived from Pons' AGPL sources) after the design Pascal Pons
   describes at blog.gamesolver.org ("Solving Connect 4: how to build a perfect AI"): bitboards
   in which column c holds bits 7c..7c+5 and bit 7c+6 is an empty sentinel; negamax with
   alpha-beta that only ever tries moves which do not hand the opponent an immediate win; a
   null-window binary search on the score; a transposition table of score bounds keyed by
   position + mask; moves ordered by the number of threats they create,
   centre first on ties. Added to that design: mirror images share one table entry; buckets of
   two slots keep the entry nearest the root next to the newest one; enhanced transposition
   cutoffs look up the children before searching any of them; and Allis' "claimeven" bounds the
   score when every column has an even number of empty cells.

   Scores follow Pons' convention, from the side to move: a win with one's k-th stone scores
   22 - k, a draw 0, a loss with the opponent's k-th stone -(22 - k). The table, the node counter
   and every search run under the GIL, so the module needs no locking. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>

#define WIDTH 7
#define HEIGHT 6
#define H1 (HEIGHT + 1)
#define CELLS (WIDTH * HEIGHT)
#define MIN_SCORE (-CELLS / 2 + 3)
#define MAX_SCORE ((CELLS + 1) / 2 - 3)

#define BOTTOM_ROW UINT64_C(0x40810204081) /* bits 0, 7, 14, ..., 42 */
#define BOARD (BOTTOM_ROW * ((UINT64_C(1) << HEIGHT) - 1))
#define ETC_MIN_EMPTY 6 /* enhanced transposition cutoffs only this far from the end */

/* Two-slot buckets; a prime number of them spreads keys (which differ mostly in high bits).
   16 MiB: a 128 MiB table saves only ~10% of the nodes at 8 stones played, and costs twice the
   time in cache and TLB misses. */
#define BUCKETS 1048573u /* the largest prime below 2^20; 2^21 slots of 8 bytes */

typedef struct {
    uint64_t position; /* stones of the player to move */
    uint64_t mask;     /* all stones */
    int moves;         /* stones played */
} Board;

/* A slot holds key << 14 | moves << 8 | code, code 0 meaning empty; key = position + mask of
   the position or its mirror image, whichever is smaller (< 2^49). */
static uint64_t *table = NULL;
static uint64_t nodes = 0;

static const int CENTRE_FIRST[WIDTH] = {3, 2, 4, 1, 5, 0, 6};

static inline uint64_t column_mask(int c) { return ((UINT64_C(1) << HEIGHT) - 1) << (H1 * c); }
static inline uint64_t top_cell(int c) { return UINT64_C(1) << (HEIGHT - 1 + H1 * c); }
static inline uint64_t bottom_cell(int c) { return UINT64_C(1) << (H1 * c); }
static inline int popcount(uint64_t x) { return __builtin_popcountll(x); }

/* Empty cells, playable or not, where `stones` would complete four in a row. */
static inline uint64_t winning_cells(uint64_t stones, uint64_t mask)
{
    uint64_t cells = (stones << 1) & (stones << 2) & (stones << 3); /* vertical */
    static const int shifts[3] = {H1, HEIGHT, HEIGHT + 2};        /* -, \ and / */
    for (int i = 0; i < 3; i++) {
        int s = shifts[i];
        uint64_t pair = (stones << s) & (stones << 2 * s);
        cells |= pair & ((stones << 3 * s) | (stones >> s));
        pair = (stones >> s) & (stones >> 2 * s);
        cells |= pair & ((stones << s) | (stones >> 3 * s));
    }
    return cells & (BOARD ^ mask);
}

#define ODD_ROWS (BOTTOM_ROW * 0x2a) /* bit rows 1, 3 and 5 */

static inline int has_four(uint64_t stones)
{
    static const int shifts[4] = {1, H1, HEIGHT, HEIGHT + 2};
    for (int i = 0; i < 4; i++) {
        uint64_t pairs = stones & (stones >> shifts[i]);
        if (pairs & (pairs >> 2 * shifts[i]))
            return 1;
    }
    return 0;
}

static inline uint64_t playable(const Board *b) { return (b->mask + BOTTOM_ROW) & BOARD; }

static inline int can_play(const Board *b, int c) { return !(b->mask & top_cell(c)); }

static inline uint64_t move_in(const Board *b, int c)
{
    return (b->mask + bottom_cell(c)) & column_mask(c);
}

static inline int wins_with(const Board *b, int c)
{
    return (winning_cells(b->position, b->mask) & move_in(b, c)) != 0;
}

static inline int can_win_next(const Board *b)
{
    return (winning_cells(b->position, b->mask) & playable(b)) != 0;
}

static inline void play(Board *b, uint64_t move)
{
    b->position ^= b->mask; /* the opponent's stones become the mover's */
    b->mask |= move;
    b->moves++;
}

/* Playable cells after which the opponent cannot win at once; 0 if every move loses. */
static inline uint64_t safe_moves(const Board *b)
{
    uint64_t moves = playable(b);
    uint64_t threats = winning_cells(b->position ^ b->mask, b->mask);
    uint64_t forced = moves & threats;
    if (forced) {
        if (forced & (forced - 1))
            return 0; /* two immediate threats: only one can be blocked */
        moves = forced;
    }
    return moves & ~(threats >> 1); /* never play directly beneath an opponent's threat */
}

/* Stored codes: an upper bound u as u - MIN_SCORE + 1 (1 .. 37), a lower bound l as
   l + MAX_SCORE - 2 * MIN_SCORE + 2 (38 .. 74). */
#define UPPER_CODE(u) ((u) - MIN_SCORE + 1)
#define LOWER_CODE(l) ((l) + MAX_SCORE - 2 * MIN_SCORE + 2)
#define FIRST_LOWER_CODE (MAX_SCORE - MIN_SCORE + 2)
#define CODE_UPPER(c) ((c) + MIN_SCORE - 1)
#define CODE_LOWER(c) ((c) - (MAX_SCORE - 2 * MIN_SCORE + 2))

/* position + mask never carries from one column into the next, so it mirrors column-wise. */
static inline uint64_t mirrored(uint64_t key)
{
    uint64_t out = 0;
    for (int c = 0; c < WIDTH; c++)
        out |= ((key >> (H1 * c)) & 0x7f) << (H1 * (WIDTH - 1 - c));
    return out;
}

static inline uint64_t board_key(uint64_t position, uint64_t mask)
{
    uint64_t key = position + mask, mirror = mirrored(key);
    return key < mirror ? key : mirror;
}

static inline int lookup(uint64_t key)
{
    uint64_t *bucket = table + 2 * (key % BUCKETS);
    if ((bucket[0] >> 14) == key)
        return (int)(bucket[0] & 0xff);
    if ((bucket[1] >> 14) == key)
        return (int)(bucket[1] & 0xff);
    return 0;
}

/* Slot 0 keeps the entry nearest the root (the most work to recompute); slot 1 the newest. */
static inline void store(uint64_t key, int moves, int code)
{
    uint64_t *bucket = table + 2 * (key % BUCKETS);
    uint64_t entry = key << 14 | (uint64_t)moves << 8 | (uint64_t)code;
    if ((bucket[0] >> 14) == key || moves <= (int)(bucket[0] >> 8 & 0x3f) || !bucket[0]) {
        if ((bucket[0] >> 14) != key)
            bucket[1] = bucket[0];
        bucket[0] = entry;
    } else {
        bucket[1] = entry;
    }
}

/* Sorts the safe moves by threats created, descending; centre first among equals. */
static int ordered_moves(const Board *b, uint64_t safe, uint64_t out[WIDTH])
{
    int scores[WIDTH];
    int n = 0;
    for (int i = 0; i < WIDTH; i++) {
        uint64_t move = safe & column_mask(CENTRE_FIRST[i]);
        if (!move)
            continue;
        int score = popcount(winning_cells(b->position | move, b->mask));
        int j = n++;
        for (; j > 0 && scores[j - 1] < score; j--) {
            scores[j] = scores[j - 1];
            out[j] = out[j - 1];
        }
        scores[j] = score;
        out[j] = move;
    }
    return n;
}

/* The score of `b`, whose mover cannot win at once: exact if it lies in (alpha, beta), else an
   upper bound <= alpha or a lower bound >= beta. */
static int negamax(const Board *b, int alpha, int beta)
{
    nodes++;
    uint64_t safe = safe_moves(b);
    if (!safe)
        return -(CELLS - b->moves) / 2; /* the opponent wins with their next stone */
    if (b->moves >= CELLS - 2)
        return 0; /* nobody can complete a line in the last two cells */

    int lower = -(CELLS - 2 - b->moves) / 2; /* the opponent cannot win before that */
    if (alpha < lower) {
        alpha = lower;
        if (alpha >= beta)
            return alpha;
    }
    int upper = (CELLS - 1 - b->moves) / 2; /* we cannot win at once */
    uint64_t key = board_key(b->position, b->mask);
    int code = lookup(key);
    if (code >= FIRST_LOWER_CODE) {
        lower = CODE_LOWER(code);
        if (alpha < lower) {
            alpha = lower;
            if (alpha >= beta)
                return alpha;
        }
    } else if (code) {
        upper = CODE_UPPER(code);
    }
    uint64_t below = playable(b);
    if (!(below & ODD_ROWS)) {
        /* Every column has an even number of empty cells, so the opponent can answer each move
           on top of it and take every second empty cell of each column: we can only ever own
           the others. Without a four among those and our stones we cannot win; if the
           opponent has one among theirs, they will complete it. */
        uint64_t ours = (below | below << 2 | below << 4) & (BOARD ^ b->mask);
        if (!has_four(b->position | ours)) {
            uint64_t theirs = (BOARD ^ b->mask) & ~ours;
            int cap = has_four((b->position ^ b->mask) | theirs) ? -1 : 0;
            if (upper > cap)
                upper = cap;
        }
    }
    if (beta > upper) {
        beta = upper;
        if (alpha >= beta)
            return beta;
    }

    uint64_t moves[WIDTH];
    int n = ordered_moves(b, safe, moves);
    uint64_t opponent = b->position ^ b->mask;
    if (b->moves < CELLS - ETC_MIN_EMPTY) {
        /* Enhanced transposition cutoff: a child already known to score <= -beta for the
           opponent proves this node >= beta without searching anything. */
        for (int i = 0; i < n; i++) {
            int child = lookup(board_key(opponent, b->mask | moves[i]));
            if (child && child < FIRST_LOWER_CODE && -CODE_UPPER(child) >= beta) {
                store(key, b->moves, LOWER_CODE(-CODE_UPPER(child)));
                return -CODE_UPPER(child);
            }
        }
    }
    for (int i = 0; i < n; i++) {
        Board child = *b;
        play(&child, moves[i]);
        int score = -negamax(&child, -beta, -alpha);
        if (score >= beta) {
            store(key, b->moves, LOWER_CODE(score));
            return score;
        }
        if (score > alpha)
            alpha = score;
    }
    store(key, b->moves, UPPER_CODE(alpha));
    return alpha;
}

/* The exact score of `b` (nobody has won yet), or with `weak` only its sign. */
static int solve(const Board *b, int weak)
{
    if (can_win_next(b))
        return weak ? 1 : (CELLS + 1 - b->moves) / 2;
    int min = -(CELLS - b->moves) / 2;
    int max = (CELLS + 1 - b->moves) / 2;
    if (weak) {
        min = -1;
        max = 1;
    }
    while (min < max) {
        /* Probe near zero first: a score close to the draw is proved with far fewer nodes. */
        int probe = min + (max - min) / 2;
        if (probe <= 0 && min / 2 < probe)
            probe = min / 2;
        else if (probe >= 0 && max / 2 > probe)
            probe = max / 2;
        int score = negamax(b, probe, probe + 1);
        if (score <= probe)
            max = score;
        else
            min = score;
    }
    return weak ? (min > 0) - (min < 0) : min;
}

static int ensure_table(void)
{
    if (!table) {
        table = calloc(2 * (size_t)BUCKETS, sizeof *table);
        if (!table) {
            PyErr_NoMemory();
            return -1;
        }
    }
    return 0;
}

/* Plays `moves`; on a bad character, a full column or a move after (or ending in) a win, sets
   ValueError naming the position and returns -1. */
static int parse(const char *moves, Py_ssize_t length, Board *b)
{
    *b = (Board){0, 0, 0};
    int won = 0;
    for (Py_ssize_t i = 0; i < length; i++) {
        int c = moves[i] - '1';
        const char *why = NULL;
        if (won)
            why = "the game was already won";
        else if (c < 0 || c >= WIDTH)
            why = "bad character";
        else if (!can_play(b, c))
            why = "column is full";
        if (why) {
            PyErr_Format(PyExc_ValueError, "position '%s': %s at move %zd", moves, why, i + 1);
            return -1;
        }
        won = wins_with(b, c);
        play(b, move_in(b, c));
    }
    if (won) {
        PyErr_Format(PyExc_ValueError, "position '%s': the game is over", moves);
        return -1;
    }
    return 0;
}

static int parse_args(PyObject *args, PyObject *kwargs, Board *b, int *weak)
{
    static char *keywords[] = {"moves", "weak", NULL};
    const char *moves;
    Py_ssize_t length;
    *weak = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "s#|$p", keywords, &moves, &length, weak))
        return -1;
    if (ensure_table() < 0)
        return -1;
    return parse(moves, length, b);
}

static PyObject *py_solve(PyObject *self, PyObject *args, PyObject *kwargs)
{
    Board b;
    int weak;
    if (parse_args(args, kwargs, &b, &weak) < 0)
        return NULL;
    return PyLong_FromLong(solve(&b, weak));
}

static PyObject *py_move_scores(PyObject *self, PyObject *args, PyObject *kwargs)
{
    Board b;
    int weak;
    if (parse_args(args, kwargs, &b, &weak) < 0)
        return NULL;
    PyObject *out = PyList_New(WIDTH);
    if (!out)
        return NULL;
    for (int c = 0; c < WIDTH; c++) {
        PyObject *item;
        if (!can_play(&b, c)) {
            item = Py_NewRef(Py_None);
        } else if (wins_with(&b, c)) {
            item = PyLong_FromLong(weak ? 1 : (CELLS + 1 - b.moves) / 2);
        } else {
            Board child = b;
            play(&child, move_in(&b, c));
            item = PyLong_FromLong(-solve(&child, weak));
        }
        if (!item) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, c, item);
    }
    return out;
}

static PyObject *py_nodes(PyObject *self, PyObject *unused)
{
    return PyLong_FromUnsignedLongLong(nodes);
}

static PyObject *py_clear(PyObject *self, PyObject *unused)
{
    free(table);
    table = NULL;
    nodes = 0;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"solve", (PyCFunction)(void (*)(void))py_solve, METH_VARARGS | METH_KEYWORDS,
     "solve(moves, *, weak=False) -> int\n--\n\n"
     "Score of the position after `moves` for the side to move (Pons' convention); "
     "with weak=True only its sign."},
    {"move_scores", (PyCFunction)(void (*)(void))py_move_scores, METH_VARARGS | METH_KEYWORDS,
     "move_scores(moves, *, weak=False) -> list[int | None]\n--\n\n"
     "Score for the side to move of playing each column (None if full)."},
    {"nodes", py_nodes, METH_NOARGS,
     "nodes() -> int\n--\n\nPositions searched since import or the last clear()."},
    {"clear", py_clear, METH_NOARGS,
     "clear() -> None\n--\n\nFree the transposition table and reset the node count."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_c4solver",
    .m_doc = "Exact Connect Four solver (C).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__c4solver(void) { return PyModule_Create(&module); }
