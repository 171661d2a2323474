//! kiln's re-run roles in one small binary, for the crate's tests: the sandbox helper, the VM
//! keeper, and the guest agent (kiln itself re-runs its own binary and ships `kiln-agent`).

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.as_slice() {
        [_, flag, spec] if flag == kiln_instance::sandbox::HELPER_ARG => {
            kiln_instance::sandbox::init::helper_main(spec)
        }
        [_, flag, argv] if flag == kiln_instance::vm::keeper::KEEPER_ARG => {
            kiln_instance::vm::keeper::keeper_main(argv)
        }
        [_, flag, ..] if flag == "--port" => kiln_instance::vm::guest::agent_main(&args[1..]),
        _ => {
            eprintln!("kiln-sandbox-helper is started by kiln, not by hand");
            std::process::exit(2);
        }
    }
}
