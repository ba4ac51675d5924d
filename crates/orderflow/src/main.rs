//! `orderflow`: see `orderflow --help`.

/// mimalloc instead of the system allocator: the services allocate a few small blocks
/// per event (output keys and values, delivery futures), and glibc's malloc and free
/// were about a fifth of the enricher's CPU time in the backlog drain's profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    orderflow::main()
}
