# Installs ihn from the build tree into a fresh prefix, then configures, builds and runs
# tests/consumer, which knows ihn only through find_package(ihn).
file(REMOVE_RECURSE "${WORK_DIR}")
set(prefix "${WORK_DIR}/prefix")
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}\n${out}")
  endif()
  message(STATUS "${out}")
endfunction()
run(${CMAKE_COMMAND} --install "${IHN_BINARY_DIR}" --prefix "${prefix}")
run(${CMAKE_COMMAND} -S "${IHN_SOURCE_DIR}/tests/consumer" -B "${WORK_DIR}/build"
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=${CXX_COMPILER}
    -DCMAKE_PREFIX_PATH=${prefix} -DTorch_DIR=${Torch_DIR})
run(${CMAKE_COMMAND} --build "${WORK_DIR}/build")
run("${WORK_DIR}/build/consumer")
