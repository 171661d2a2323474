//! `kiln-agent`: kiln's agent in VM guests (see `kiln_instance::vm::guest`). It ships next to the
//! `kiln` binary, which copies it into every VM it boots.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    kiln_instance::vm::guest::agent_main(&args)
}
