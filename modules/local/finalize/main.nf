process FINALIZE {
    tag "${model.subdir ? model.label + ': ' : ''}${ids.size() == 1 ? ids[0] : "${ids[0]}..${ids[-1]} (${ids.size()} images)"}"
    label 'cpu_small'
    conda "${projectDir}/envs/classical.yml"

    input:
    // ids[k] is published from jobs[k] and results[k]; results are absent ([]) for cache hits
    // model: [index, label, subdir (where it publishes, under --outdir), family]
    tuple val(model), val(ids), path(jobs, stageAs: 'jobs/?/*'), path(results, stageAs: 'results/?/*')
    val code                                   // digest of the Python files this step runs: a change reruns the task

    output:
    tuple val(model), val(ids), path('records/*.json'), emit: records   // each image's record, as published (ext.args --outdir)

    script:
    def args = task.ext.args ?: ''
    def staged_jobs = jobs instanceof List ? jobs : [jobs]
    def staged_results = results instanceof List ? results : (results ? [results] : [])
    def rows = ids.withIndex().collect { id, k ->
        [id, staged_jobs[k], staged_results ? staged_results[k] : ''].join('\t') }
    """
    cat > items.tsv <<'AIOD_ITEMS'
${rows.join('\n')}
AIOD_ITEMS
    rm -rf records              # a folder -resume reuses may hold a killed attempt's part
    aiod finalize --items items.tsv --records records ${args}
    """

    stub:
    """
    mkdir records
    ${ids.collect { id -> "echo '{\"id\": \"${id}\", \"objects\": 0, \"cache\": \"stub\"}' > records/${id}.json" }.join('\n    ')}
    """
}
