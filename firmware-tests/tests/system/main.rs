//! System tests: real `edgeship` and `edgeship-agent` processes, a real broker, faults.
