process COMPARE {
    tag "${records instanceof List ? records.size() : 1} result(s)"
    label 'cpu_small'
    conda "${projectDir}/envs/classical.yml"

    input:
    path records, stageAs: 'records/?/*'    // every record of the run (FINALIZE)
    path scores, stageAs: 'scores/?/*'      // every image's scores against its ground truth (EVALUATE), or none
    val counted                             // region tables COUNT wrote (the report shows them: it waits for them)
    val run_info                            // JSON: the command, Nextflow and pipeline versions (for the report)
    val code                                // digest of the Python files this step runs: a change reruns the task

    output:
    path 'comparison.txt', emit: table      // the table printed at the end of the run

    script:
    def args = task.ext.args ?: ''
    """
    cat > run.json <<'AIOD_RUN'
${run_info}
AIOD_RUN
    aiod compare --records records/*/* ${scores ? '--scores scores/*/*' : ''} --run-info run.json --text comparison.txt ${args}
    """

    stub:
    """
    echo '(stub run: no comparison)' > comparison.txt
    """
}
